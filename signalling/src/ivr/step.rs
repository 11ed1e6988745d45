//! Verb parameters, checked and typed.
//!
//! Publishing a flow compiles every node's parameters here, so a typo (`max_digit`), a value
//! out of range or an unknown time zone is refused with the node and field named, before any
//! call reaches the flow.

use std::time::Duration;

use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use serde_json::{Map, Value};

use super::{Error, Verb, valid_name};

/// Longest text parameter (a URL, a template).
const MAX_TEXT: usize = 2048;
/// Most variables a `set` node or an `http` node's `save` may name.
const MAX_VARS_PER_NODE: usize = 32;
/// Most opening-hour ranges or holidays in a `schedule` node.
const MAX_SCHEDULE_ENTRIES: usize = 366;

/// A node's verb with its typed parameters.
#[derive(Clone, Debug)]
pub(crate) enum Step {
    Answer,
    Play { prompt: String },
    Pause { duration: Duration },
    Gather(Gather),
    Dial(Dial),
    Record(Record),
    Set { vars: Vec<(String, Template)> },
    Switch { var: String },
    Schedule(Box<Schedule>),
    Http(Box<Http>),
    Goto,
    Hangup,
}

/// `gather`: collect DTMF digits.
#[derive(Clone, Debug)]
pub(crate) struct Gather {
    pub(crate) prompt: Option<String>,
    pub(crate) max_digits: usize,
    pub(crate) terminator: Option<char>,
    /// From the end of the prompt to the end of the entry.
    pub(crate) timeout: Duration,
    pub(crate) inter_digit_timeout: Duration,
    pub(crate) attempts: u32,
}

/// Who a `dial` node calls.
#[derive(Clone, Debug)]
pub(crate) enum DialTo {
    Extension(Template),
    RingGroup(Template),
    Number {
        number: Template,
        trunk: Option<String>,
    },
}

/// `dial`: call someone and bridge the caller to them.
#[derive(Clone, Debug)]
pub(crate) struct Dial {
    pub(crate) to: DialTo,
    pub(crate) timeout: Duration,
}

/// `record`: record the caller (voicemail).
#[derive(Clone, Debug)]
pub(crate) struct Record {
    pub(crate) max_length: Duration,
    pub(crate) silence: Option<Duration>,
    pub(crate) beep: bool,
    pub(crate) finish_on_key: Option<char>,
    pub(crate) mailbox: Option<Template>,
}

/// One opening-hours range: on these weekdays, from `open` until `close` (local time). A
/// `close` at or before `open` runs past midnight into the next day.
#[derive(Clone, Debug)]
pub(crate) struct Hours {
    pub(crate) days: [bool; 7],
    pub(crate) open: Time,
    pub(crate) close: Option<Time>,
}

/// `schedule`: branch on business hours.
#[derive(Clone, Debug)]
pub(crate) struct Schedule {
    pub(crate) tz: TimeZone,
    pub(crate) hours: Vec<Hours>,
    pub(crate) holidays: Vec<Date>,
}

/// An HTTP method an `http` node may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `GET`, no body.
    Get,
    /// `POST` with the call's variables as a JSON object.
    Post,
}

/// `http`: fetch JSON and keep parts of it in variables.
#[derive(Clone, Debug)]
pub(crate) struct Http {
    pub(crate) url: Template,
    pub(crate) method: Method,
    pub(crate) timeout: Duration,
    /// Variable ← JSON pointer into the response.
    pub(crate) save: Vec<(String, String)>,
}

/// A text with `${name}` references to call variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Template(String);

impl Template {
    fn parse(node: &str, field: &str, text: &str) -> Result<Self, Error> {
        if text.len() > MAX_TEXT {
            return Err(param(
                node,
                field,
                format!("is longer than {MAX_TEXT} bytes"),
            ));
        }
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                return Err(param(node, field, "has `${` without a closing `}`"));
            };
            if !valid_var(&after[..end]) {
                return Err(param(
                    node,
                    field,
                    format!(
                        "refers to `{}`, which is not a variable name",
                        &after[..end]
                    ),
                ));
            }
            rest = &after[end + 1..];
        }
        Ok(Self(text.to_owned()))
    }

    /// The text with every `${name}` replaced by `lookup(name)` (empty when unset).
    pub(crate) fn render(&self, lookup: impl Fn(&str) -> Option<String>) -> String {
        let mut out = String::with_capacity(self.0.len());
        let mut rest = self.0.as_str();
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            // Checked at compile time: every `${` is closed.
            let end = after.find('}').unwrap_or(after.len());
            out.push_str(&lookup(&after[..end]).unwrap_or_default());
            rest = after.get(end + 1..).unwrap_or("");
        }
        out.push_str(rest);
        out
    }
}

/// Variable names: 1-32 letters, digits and `_`, not starting with a digit.
pub(crate) fn valid_var(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn param(node: &str, field: &str, message: impl Into<String>) -> Error {
    Error::Param {
        node: node.to_owned(),
        field: field.to_owned(),
        message: message.into(),
    }
}

/// Typed access to one node's parameters, refusing fields the verb does not take.
struct Params<'a> {
    node: &'a str,
    map: &'a Map<String, Value>,
}

impl<'a> Params<'a> {
    fn allow(&self, fields: &[&str]) -> Result<(), Error> {
        match self.map.keys().find(|k| !fields.contains(&k.as_str())) {
            Some(unknown) => Err(param(
                self.node,
                unknown,
                format!(
                    "is not a parameter of this verb (it takes: {})",
                    if fields.is_empty() {
                        "none".to_owned()
                    } else {
                        fields.join(", ")
                    }
                ),
            )),
            None => Ok(()),
        }
    }

    fn err(&self, field: &str, message: impl Into<String>) -> Error {
        param(self.node, field, message)
    }

    fn text(&self, field: &str) -> Result<Option<&'a str>, Error> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Err(self.err(field, "must not be empty")),
            Some(Value::String(s)) if s.len() > MAX_TEXT => {
                Err(self.err(field, format!("is longer than {MAX_TEXT} bytes")))
            }
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.err(field, "must be a string")),
        }
    }

    fn required(&self, field: &str) -> Result<&'a str, Error> {
        self.text(field)?
            .ok_or_else(|| self.err(field, "is required"))
    }

    fn template(&self, field: &str) -> Result<Option<Template>, Error> {
        self.text(field)?
            .map(|t| Template::parse(self.node, field, t))
            .transpose()
    }

    fn name(&self, field: &str) -> Result<Option<String>, Error> {
        match self.text(field)? {
            Some(n) if !valid_name(n) => Err(self.err(
                field,
                "must be 1-64 characters of letters, digits, `_`, `-` and `.`",
            )),
            n => Ok(n.map(str::to_owned)),
        }
    }

    fn seconds(&self, field: &str, default: f64, min: f64, max: f64) -> Result<Duration, Error> {
        let secs = match self.map.get(field) {
            None | Some(Value::Null) => default,
            Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
            Some(_) => return Err(self.err(field, "must be a number of seconds")),
        };
        if !(min..=max).contains(&secs) {
            return Err(self.err(field, format!("must be between {min} and {max} seconds")));
        }
        Ok(Duration::from_secs_f64(secs))
    }

    fn count(&self, field: &str, default: u64, min: u64, max: u64) -> Result<u64, Error> {
        let n = match self.map.get(field) {
            None | Some(Value::Null) => default,
            Some(Value::Number(n)) => n.as_u64().unwrap_or(u64::MAX),
            Some(_) => return Err(self.err(field, "must be a whole number")),
        };
        if !(min..=max).contains(&n) {
            return Err(self.err(field, format!("must be between {min} and {max}")));
        }
        Ok(n)
    }

    fn flag(&self, field: &str, default: bool) -> Result<bool, Error> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(self.err(field, "must be true or false")),
        }
    }

    /// A DTMF key, or `""` for none.
    fn key(&self, field: &str, default: Option<char>) -> Result<Option<char>, Error> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => {
                let mut chars = s.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) if is_dtmf(c) => Ok(Some(c)),
                    _ => Err(self.err(field, "must be one of 0-9, *, #, A-D, or \"\"")),
                }
            }
            Some(_) => Err(self.err(field, "must be a string")),
        }
    }

    fn object(&self, field: &str) -> Result<Option<&'a Map<String, Value>>, Error> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) if m.len() > MAX_VARS_PER_NODE => Err(self.err(
                field,
                format!("may have at most {MAX_VARS_PER_NODE} entries"),
            )),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(_) => Err(self.err(field, "must be an object")),
        }
    }

    fn list(&self, field: &str) -> Result<&'a [Value], Error> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(&[]),
            Some(Value::Array(a)) if a.len() > MAX_SCHEDULE_ENTRIES => Err(self.err(
                field,
                format!("may have at most {MAX_SCHEDULE_ENTRIES} entries"),
            )),
            Some(Value::Array(a)) => Ok(a),
            Some(_) => Err(self.err(field, "must be a list")),
        }
    }
}

/// Whether `c` is a DTMF key (RFC 4733 events 0-15).
pub(crate) fn is_dtmf(c: char) -> bool {
    matches!(c, '0'..='9' | '*' | '#' | 'A'..='D')
}

impl Step {
    /// Types a node's parameters for its verb.
    pub(crate) fn compile(
        node: &str,
        verb: Verb,
        map: &Map<String, Value>,
        has_matches: bool,
    ) -> Result<Self, Error> {
        let p = Params { node, map };
        Ok(match verb {
            Verb::Answer | Verb::Goto | Verb::Hangup => {
                p.allow(&[])?;
                match verb {
                    Verb::Answer => Self::Answer,
                    Verb::Goto => Self::Goto,
                    _ => Self::Hangup,
                }
            }
            Verb::Play => {
                p.allow(&["prompt"])?;
                let prompt = p
                    .name("prompt")?
                    .ok_or_else(|| p.err("prompt", "is required"))?;
                Self::Play { prompt }
            }
            Verb::Pause => {
                p.allow(&["seconds"])?;
                Self::Pause {
                    duration: p.seconds("seconds", 1.0, 0.01, 300.0)?,
                }
            }
            Verb::Gather => {
                p.allow(&[
                    "prompt",
                    "max_digits",
                    "terminator",
                    "timeout",
                    "inter_digit_timeout",
                    "attempts",
                ])?;
                let max_digits = p.count("max_digits", if has_matches { 1 } else { 20 }, 1, 32)?;
                Self::Gather(Gather {
                    prompt: p.name("prompt")?,
                    max_digits: max_digits as usize,
                    terminator: p.key("terminator", Some('#'))?,
                    timeout: p.seconds("timeout", 5.0, 0.5, 120.0)?,
                    inter_digit_timeout: p.seconds("inter_digit_timeout", 3.0, 0.5, 60.0)?,
                    attempts: p.count("attempts", 3, 1, 10)? as u32,
                })
            }
            Verb::Dial => {
                p.allow(&["extension", "ring_group", "number", "trunk", "timeout"])?;
                let targets = [
                    p.template("extension")?.map(DialTo::Extension),
                    p.template("ring_group")?.map(DialTo::RingGroup),
                    p.template("number")?.map(|number| DialTo::Number {
                        number,
                        trunk: None,
                    }),
                ];
                let mut targets = targets.into_iter().flatten();
                let (Some(mut to), None) = (targets.next(), targets.next()) else {
                    return Err(p.err(
                        "extension",
                        "a dial node needs exactly one of `extension`, `ring_group` or `number`",
                    ));
                };
                let trunk = p.name("trunk")?;
                match &mut to {
                    DialTo::Number { trunk: t, .. } => *t = trunk,
                    _ if trunk.is_some() => {
                        return Err(p.err("trunk", "applies only to dialling a `number`"));
                    }
                    _ => {}
                }
                Self::Dial(Dial {
                    to,
                    timeout: p.seconds("timeout", 30.0, 1.0, 300.0)?,
                })
            }
            Verb::Record => {
                p.allow(&[
                    "max_seconds",
                    "silence_seconds",
                    "beep",
                    "finish_on_key",
                    "mailbox",
                ])?;
                let silence = p.seconds("silence_seconds", 5.0, 0.0, 60.0)?;
                Self::Record(Record {
                    max_length: p.seconds("max_seconds", 120.0, 1.0, 600.0)?,
                    silence: (!silence.is_zero()).then_some(silence),
                    beep: p.flag("beep", true)?,
                    finish_on_key: p.key("finish_on_key", Some('#'))?,
                    mailbox: p.template("mailbox")?,
                })
            }
            Verb::Set => {
                p.allow(&["vars"])?;
                let vars = p
                    .object("vars")?
                    .ok_or_else(|| p.err("vars", "is required"))?;
                let vars = vars
                    .iter()
                    .map(|(name, value)| {
                        if !valid_var(name) {
                            return Err(p.err(
                                "vars",
                                format!(
                                    "`{name}` is not a variable name (letters, digits and `_`)"
                                ),
                            ));
                        }
                        let Value::String(text) = value else {
                            return Err(p.err("vars", format!("`{name}` must be set to a string")));
                        };
                        Ok((name.clone(), Template::parse(node, "vars", text)?))
                    })
                    .collect::<Result<_, _>>()?;
                Self::Set { vars }
            }
            Verb::Switch => {
                p.allow(&["var"])?;
                let var = p.required("var")?;
                if !valid_var(var) {
                    return Err(p.err("var", "must be a variable name (letters, digits and `_`)"));
                }
                Self::Switch {
                    var: var.to_owned(),
                }
            }
            Verb::Schedule => {
                p.allow(&["timezone", "hours", "holidays"])?;
                Self::Schedule(Box::new(Schedule::compile(&p)?))
            }
            Verb::Http => {
                p.allow(&["url", "method", "timeout", "save"])?;
                let url = p.required("url")?;
                let scheme_ok = url.split_once("://").is_some_and(|(scheme, rest)| {
                    matches!(scheme, "http" | "https") && !rest.is_empty()
                });
                if !scheme_ok {
                    return Err(p.err("url", "must be an http:// or https:// URL"));
                }
                let method = match p.text("method")? {
                    None | Some("GET") => Method::Get,
                    Some("POST") => Method::Post,
                    Some(_) => return Err(p.err("method", "must be GET or POST")),
                };
                let save = p
                    .object("save")?
                    .into_iter()
                    .flatten()
                    .map(|(var, pointer)| match pointer {
                        Value::String(ptr) if valid_var(var) && (ptr.is_empty() || ptr.starts_with('/')) => {
                            Ok((var.clone(), ptr.clone()))
                        }
                        _ => Err(p.err(
                            "save",
                            format!("`{var}` must be a variable name set to a JSON pointer such as \"/customer/name\""),
                        )),
                    })
                    .collect::<Result<_, _>>()?;
                Self::Http(Box::new(Http {
                    url: Template::parse(node, "url", url)?,
                    method,
                    timeout: p.seconds("timeout", 5.0, 0.1, 30.0)?,
                    save,
                }))
            }
        })
    }
}

const WEEKDAYS: [(&str, Weekday); 7] = [
    ("mon", Weekday::Monday),
    ("tue", Weekday::Tuesday),
    ("wed", Weekday::Wednesday),
    ("thu", Weekday::Thursday),
    ("fri", Weekday::Friday),
    ("sat", Weekday::Saturday),
    ("sun", Weekday::Sunday),
];

fn day_index(day: Weekday) -> usize {
    usize::from(day.to_monday_zero_offset().unsigned_abs())
}

fn parse_time(text: &str) -> Option<Time> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (i8, i8) = (h.parse().ok()?, m.parse().ok()?);
    Time::new(h, m, 0, 0).ok()
}

impl Schedule {
    fn compile(p: &Params<'_>) -> Result<Self, Error> {
        let zone = p.required("timezone")?;
        let tz = TimeZone::get(zone).map_err(|_| {
            p.err(
                "timezone",
                format!("`{zone}` is not a known IANA time zone"),
            )
        })?;
        let hours = p
            .list("hours")?
            .iter()
            .map(|entry| {
                let bad = || {
                    p.err(
                        "hours",
                        "entries look like {\"days\": [\"mon\", \"fri\"], \"open\": \"09:00\", \"close\": \"17:00\"}",
                    )
                };
                let Value::Object(e) = entry else {
                    return Err(bad());
                };
                if e.keys().any(|k| !matches!(k.as_str(), "days" | "open" | "close")) {
                    return Err(bad());
                }
                let mut days = [false; 7];
                for d in e.get("days").and_then(Value::as_array).ok_or_else(bad)? {
                    let (_, day) = WEEKDAYS
                        .iter()
                        .find(|(name, _)| Some(*name) == d.as_str())
                        .ok_or_else(bad)?;
                    days[day_index(*day)] = true;
                }
                let time = |k: &str| e.get(k).and_then(Value::as_str).ok_or_else(bad);
                let open = parse_time(time("open")?).ok_or_else(bad)?;
                let close = match time("close")? {
                    "24:00" => None,
                    t => Some(parse_time(t).ok_or_else(bad)?),
                };
                Ok(Hours { days, open, close })
            })
            .collect::<Result<_, _>>()?;
        let holidays = p
            .list("holidays")?
            .iter()
            .map(|d| {
                d.as_str()
                    .and_then(|s| s.parse::<Date>().ok())
                    .ok_or_else(|| p.err("holidays", "entries are dates like \"2026-12-25\""))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            tz,
            hours,
            holidays,
        })
    }

    /// `open`, `closed` or `holiday` at `now`, in the schedule's time zone.
    pub(crate) fn state(&self, now: jiff::Timestamp) -> &'static str {
        let local = now.to_zoned(self.tz.clone());
        let (date, time) = (local.date(), local.time());
        if self.holidays.contains(&date) {
            return "holiday";
        }
        let today = day_index(local.weekday());
        let yesterday = (today + 6) % 7;
        let open = self.hours.iter().any(|h| match h.close {
            // Until midnight.
            None => h.days[today] && time >= h.open,
            Some(close) if close > h.open => h.days[today] && time >= h.open && time < close,
            // Past midnight: the evening part today, the morning part from yesterday.
            Some(close) => (h.days[today] && time >= h.open) || (h.days[yesterday] && time < close),
        });
        if open { "open" } else { "closed" }
    }
}
