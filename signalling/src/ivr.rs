//! IVR flow graphs.
//!
//! A flow is a JSON document of named nodes with explicit transitions:
//!
//! ```json
//! {
//!   "entry": "welcome",
//!   "nodes": {
//!     "welcome": { "verb": "answer", "next": "menu" },
//!     "menu": {
//!       "verb": "gather", "prompt": "menu", "max_digits": 1,
//!       "transitions": { "match.1": "sales", "match.2": "support",
//!                        "nomatch": "menu", "timeout": "menu", "max_attempts": "bye" }
//!     },
//!     "sales": { "verb": "dial", "extension": "1001",
//!                "transitions": { "answered": "bye", "busy": "bye", "no_answer": "bye", "failed": "bye" } },
//!     "support": { "verb": "dial", "ring_group": "support", "transitions": { "failed": "bye" } },
//!     "bye": { "verb": "hangup" }
//!   }
//! }
//! ```
//!
//! `next` is where a node goes when it completes; `transitions` name the outcomes a verb can
//! have (see [`Verb::transitions`]). Keys other than `verb`, `next` and `transitions` are the
//! verb's parameters. A node with nowhere to go ends the call. [`Graph::parse`] checks the
//! whole document: an entry node that exists, known verbs, outcomes the verb can produce,
//! transitions that name existing nodes, and every parameter (see `docs/ivr.md`).
//!
//! [`Flow`] is the compiled form that [`FlowRun`] runs, one per call (see [`engine`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod engine;
mod step;
#[cfg(test)]
mod tests;

pub use engine::{
    Action, CallInfo, DialFailure, DialTarget, EndReason, Event, Flow, FlowRun, HttpRequest,
    RecordRequest,
};
/// The wall-clock type [`FlowRun::start`] takes (re-exported from `jiff`).
pub use jiff::Timestamp;
pub use step::Method;

/// Most nodes a flow may have.
pub const MAX_NODES: usize = 500;
/// Longest node name.
pub const MAX_NAME_LEN: usize = 64;

/// What a node does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verb {
    /// Answer the call.
    Answer,
    /// Play a prompt.
    Play,
    /// Wait in silence.
    Pause,
    /// Collect DTMF digits.
    Gather,
    /// Call an extension, ring group or number.
    Dial,
    /// Record a message (voicemail).
    Record,
    /// Set a variable.
    Set,
    /// Branch on a variable.
    Switch,
    /// Branch on business hours.
    Schedule,
    /// Fetch JSON from a URL and branch on it.
    Http,
    /// Jump to another node.
    Goto,
    /// End the call.
    Hangup,
}

/// An outcome a verb can have, named in `transitions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An exact outcome name.
    Exact(&'static str),
    /// An outcome name with a prefix and a caller-chosen suffix, e.g. `match.<digits>`.
    Prefixed(&'static str),
}

impl Verb {
    /// The outcomes this verb can produce, besides finishing (`next`).
    pub fn transitions(self) -> &'static [Outcome] {
        use Outcome::{Exact, Prefixed};
        match self {
            Self::Gather => &[
                Prefixed("match."),
                Exact("nomatch"),
                Exact("timeout"),
                Exact("max_attempts"),
            ],
            Self::Dial => &[
                Exact("answered"),
                Exact("busy"),
                Exact("no_answer"),
                Exact("failed"),
            ],
            Self::Switch => &[Prefixed("case."), Exact("default")],
            Self::Schedule => &[Exact("open"), Exact("closed"), Exact("holiday")],
            Self::Http => &[Exact("success"), Exact("error")],
            Self::Record => &[Exact("no_input")],
            Self::Answer | Self::Play | Self::Pause | Self::Set | Self::Goto | Self::Hangup => &[],
        }
    }

    /// Whether the node may have a `next`.
    pub fn continues(self) -> bool {
        self != Self::Hangup
    }

    fn accepts(self, outcome: &str) -> bool {
        self.transitions().iter().any(|o| match *o {
            Outcome::Exact(name) => outcome == name,
            Outcome::Prefixed(prefix) => outcome.strip_prefix(prefix).is_some_and(valid_suffix),
        })
    }
}

fn valid_suffix(suffix: &str) -> bool {
    !suffix.is_empty()
        && suffix.len() <= MAX_NAME_LEN
        && suffix.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'*' | b'#' | b'_' | b'-' | b'+' | b'.')
        })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// One node of a flow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// What the node does.
    pub verb: Verb,
    /// Where to go when the verb completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// Where to go on each outcome.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub transitions: BTreeMap<String, String>,
    /// The verb's parameters.
    #[serde(flatten)]
    pub params: serde_json::Map<String, serde_json::Value>,
}

/// A whole flow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Graph {
    /// The node a call starts at.
    pub entry: String,
    /// Nodes by name.
    pub nodes: BTreeMap<String, Node>,
}

/// Why a graph was refused. Messages name the node and field at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Not a graph document at all (bad JSON shape, unknown verb, wrong types).
    #[error("invalid flow document: {0}")]
    Shape(String),
    /// No nodes.
    #[error("a flow needs at least one node")]
    Empty,
    /// More than [`MAX_NODES`] nodes.
    #[error("a flow may have at most {MAX_NODES} nodes")]
    TooLarge,
    /// A node name that is empty, too long or has odd characters.
    #[error("node name `{0}` must be 1-64 characters of letters, digits, `_`, `-` and `.`")]
    BadName(String),
    /// The entry node does not exist.
    #[error("entry node `{0}` does not exist")]
    MissingEntry(String),
    /// A transition names a node that does not exist.
    #[error("node `{node}`: `{outcome}` goes to `{target}`, which does not exist")]
    MissingTarget {
        /// Node holding the transition.
        node: String,
        /// `next` or the outcome name.
        outcome: String,
        /// The missing node.
        target: String,
    },
    /// An outcome the verb cannot produce.
    #[error("node `{node}`: a `{verb:?}` node has no outcome `{outcome}`")]
    UnknownOutcome {
        /// Node holding the transition.
        node: String,
        /// Its verb.
        verb: Verb,
        /// The outcome.
        outcome: String,
    },
    /// `next` on a verb that ends the call.
    #[error("node `{0}`: a hangup node cannot have `next`")]
    NextAfterHangup(String),
    /// A `goto` without a target.
    #[error("node `{0}`: a goto node needs `next`")]
    GotoWithoutNext(String),
    /// A verb parameter that is missing, unknown or out of range.
    #[error("node `{node}`: `{field}` {message}")]
    Param {
        /// Node holding the parameter.
        node: String,
        /// The parameter.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

impl Graph {
    /// Parses and validates a flow document.
    pub fn parse(document: &serde_json::Value) -> Result<Self, Error> {
        let graph = Self::deserialize(document).map_err(|e| Error::Shape(e.to_string()))?;
        graph.validate()?;
        Ok(graph)
    }

    /// Checks the whole graph (see the module docs).
    pub fn validate(&self) -> Result<(), Error> {
        Flow::compile(self).map(drop)
    }

    /// Checks names, the entry and the transitions, not the verbs' parameters.
    fn validate_structure(&self) -> Result<(), Error> {
        if self.nodes.is_empty() {
            return Err(Error::Empty);
        }
        if self.nodes.len() > MAX_NODES {
            return Err(Error::TooLarge);
        }
        if !self.nodes.contains_key(&self.entry) {
            return Err(Error::MissingEntry(self.entry.clone()));
        }
        for (name, node) in &self.nodes {
            if !valid_name(name) {
                return Err(Error::BadName(name.clone()));
            }
            if node.next.is_some() && !node.verb.continues() {
                return Err(Error::NextAfterHangup(name.clone()));
            }
            if node.verb == Verb::Goto && node.next.is_none() {
                return Err(Error::GotoWithoutNext(name.clone()));
            }
            let next = node.next.iter().map(|target| ("next", target));
            let outcomes = node.transitions.iter().map(|(o, t)| (o.as_str(), t));
            for (outcome, target) in next.chain(outcomes) {
                if outcome != "next" && !node.verb.accepts(outcome) {
                    return Err(Error::UnknownOutcome {
                        node: name.clone(),
                        verb: node.verb,
                        outcome: outcome.to_owned(),
                    });
                }
                if !self.nodes.contains_key(target) {
                    return Err(Error::MissingTarget {
                        node: name.clone(),
                        outcome: outcome.to_owned(),
                        target: target.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod graph_tests {
    use serde_json::json;

    use super::*;

    fn menu() -> serde_json::Value {
        json!({
            "entry": "welcome",
            "nodes": {
                "welcome": {"verb": "answer", "next": "menu"},
                "menu": {
                    "verb": "gather", "prompt": "menu", "max_digits": 1,
                    "transitions": {"match.1": "sales", "match.*": "menu", "nomatch": "menu",
                                    "timeout": "menu", "max_attempts": "bye"}
                },
                "sales": {"verb": "dial", "extension": "1001", "transitions": {"answered": "bye", "failed": "bye"}},
                "bye": {"verb": "hangup"}
            }
        })
    }

    #[test]
    fn accepts_a_menu_and_keeps_params() {
        let graph = Graph::parse(&menu()).unwrap();
        assert_eq!(graph.nodes["menu"].params["max_digits"], json!(1));
        assert_eq!(graph.nodes["sales"].transitions["answered"], "bye");
        // Round trip through JSON keeps the document.
        assert_eq!(serde_json::to_value(&graph).unwrap(), menu());
    }

    #[test]
    fn refuses_structural_errors() {
        let mut missing_entry = menu();
        missing_entry["entry"] = json!("nowhere");
        assert_eq!(
            Graph::parse(&missing_entry),
            Err(Error::MissingEntry("nowhere".into()))
        );

        let mut dangling = menu();
        dangling["nodes"]["menu"]["transitions"]["match.2"] = json!("support");
        assert!(
            matches!(Graph::parse(&dangling), Err(Error::MissingTarget { target, .. }) if target == "support")
        );

        let mut bad_next = menu();
        bad_next["nodes"]["welcome"]["next"] = json!("ghost");
        assert!(
            matches!(Graph::parse(&bad_next), Err(Error::MissingTarget { outcome, .. }) if outcome == "next")
        );

        let mut wrong_outcome = menu();
        wrong_outcome["nodes"]["sales"]["transitions"]["timeout"] = json!("bye");
        assert!(matches!(
            Graph::parse(&wrong_outcome),
            Err(Error::UnknownOutcome { .. })
        ));

        let mut empty_match = menu();
        empty_match["nodes"]["menu"]["transitions"]["match."] = json!("bye");
        assert!(matches!(
            Graph::parse(&empty_match),
            Err(Error::UnknownOutcome { .. })
        ));

        let mut after_hangup = menu();
        after_hangup["nodes"]["bye"]["next"] = json!("menu");
        assert_eq!(
            Graph::parse(&after_hangup),
            Err(Error::NextAfterHangup("bye".into()))
        );

        let mut unknown_verb = menu();
        unknown_verb["nodes"]["bye"]["verb"] = json!("explode");
        assert!(matches!(Graph::parse(&unknown_verb), Err(Error::Shape(_))));

        assert!(matches!(
            Graph::parse(&json!({"entry": "a", "nodes": {}})),
            Err(Error::Empty)
        ));
        assert!(matches!(Graph::parse(&json!([1, 2])), Err(Error::Shape(_))));
        assert!(matches!(
            Graph::parse(&json!({"entry": "a", "nodes": {}, "extra": 1})),
            Err(Error::Shape(_))
        ));
        assert!(matches!(
            Graph::parse(&json!({"entry": "a b", "nodes": {"a b": {"verb": "hangup"}}})),
            Err(Error::BadName(_))
        ));
        assert!(matches!(
            Graph::parse(&json!({"entry": "g", "nodes": {"g": {"verb": "goto"}}})),
            Err(Error::GotoWithoutNext(_))
        ));
    }

    #[test]
    fn size_is_bounded() {
        let nodes: serde_json::Map<String, serde_json::Value> = (0..=MAX_NODES)
            .map(|i| (format!("n{i}"), json!({"verb": "hangup"})))
            .collect();
        let doc = json!({"entry": "n0", "nodes": nodes});
        assert_eq!(Graph::parse(&doc), Err(Error::TooLarge));
    }
}
