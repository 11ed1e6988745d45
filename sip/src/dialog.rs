//! Dialogs (RFC 3261 §12): the state two user agents share after an INVITE, and how requests
//! inside it are built and checked.
//!
//! A [`Dialog`] is created by the UAC from a response with a To tag (early for 101-199,
//! confirmed for 2xx, §12.1.2) or by the UAS from the INVITE it answers (§12.1.1). It keeps
//! the dialog ID (Call-ID, local tag, remote tag), both CSeq counters, the local and remote
//! URIs, the remote target (Contact) and the route set (Record-Route, reversed for the UAC).
//!
//! Requests inside the dialog follow §12.2.1.1: with loose routing (the first route has
//! `;lr`), the Request-URI is the remote target and the route set goes into `Route`; with a
//! strict router first, the Request-URI is that router and the remote target ends the `Route`
//! list. Incoming requests are checked against the remote CSeq (§12.2.2), and re-INVITE and
//! UPDATE refresh the remote target (§12.2, RFC 3311 §5.2).

use bytes::Bytes;

use crate::header::{CSeq, NameAddr};
use crate::message::{HeaderName, Headers, Method, Request, Response};
use crate::uri::Uri;

/// Identifies a dialog from one side: Call-ID, our tag, their tag.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DialogId {
    /// Call-ID.
    pub call_id: String,
    /// Our tag (From tag for the UAC, To tag for the UAS).
    pub local_tag: String,
    /// Their tag.
    pub remote_tag: String,
}

impl DialogId {
    /// The ID of the dialog a request received belongs to (our tag is its To tag).
    pub fn of_incoming(request: &Request) -> Option<Self> {
        Some(Self {
            call_id: request.headers.get(&HeaderName::CallId)?.to_owned(),
            local_tag: tag_of(&request.headers, &HeaderName::To)?,
            remote_tag: tag_of(&request.headers, &HeaderName::From)?,
        })
    }

    /// The ID of the dialog a response received belongs to (our tag is its From tag).
    pub fn of_response(response: &Response) -> Option<Self> {
        Some(Self {
            call_id: response.headers.get(&HeaderName::CallId)?.to_owned(),
            local_tag: tag_of(&response.headers, &HeaderName::From)?,
            remote_tag: tag_of(&response.headers, &HeaderName::To)?,
        })
    }
}

fn tag_of(headers: &Headers, name: &HeaderName) -> Option<String> {
    NameAddr::parse(headers.get(name)?)
        .ok()?
        .tag()
        .map(str::to_owned)
}

/// Early (after a provisional response with a tag) or confirmed (after a 2xx).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialogState {
    /// Created by a 1xx; ends if the INVITE fails.
    Early,
    /// Created or confirmed by a 2xx.
    Confirmed,
}

/// Why an in-dialog request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DialogError {
    /// The message lacks a header the dialog needs.
    #[error("missing or malformed {0}")]
    Malformed(&'static str),
    /// The request's CSeq is not above the last one (§12.2.2: answer 500).
    #[error("CSeq out of order")]
    CSeqOutOfOrder,
}

/// One side's view of a dialog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dialog {
    /// The dialog ID.
    pub id: DialogId,
    /// Early or confirmed.
    pub state: DialogState,
    /// CSeq of the last request we sent (the next one uses +1).
    pub local_seq: u32,
    /// CSeq of the last request we received, if any.
    pub remote_seq: Option<u32>,
    /// Our URI (From of our requests), as a header value without tag.
    pub local_uri: String,
    /// Their URI (To of our requests), without tag.
    pub remote_uri: String,
    /// Where to send requests: their Contact.
    pub remote_target: Uri,
    /// Route set, in the order our requests carry it.
    pub route_set: Vec<String>,
    /// Whether the dialog was set up over `sips:` (§12.1.1).
    pub secure: bool,
}

/// A header value without its `tag` parameter.
fn without_tag(value: &str) -> Result<String, DialogError> {
    let addr = NameAddr::parse(value).map_err(|_| DialogError::Malformed("From/To"))?;
    let params: String = addr
        .params
        .iter()
        .filter(|(name, _)| !name.eq_ignore_ascii_case("tag"))
        .map(|(name, value)| match value {
            Some(value) => format!(";{name}={value}"),
            None => format!(";{name}"),
        })
        .collect();
    let display = addr
        .display_name
        .map(|d| format!("{d} "))
        .unwrap_or_default();
    Ok(format!("{display}<{}>{params}", addr.uri))
}

fn contact_uri(headers: &Headers) -> Result<Uri, DialogError> {
    let contact = headers
        .get(&HeaderName::Contact)
        .ok_or(DialogError::Malformed("Contact"))?;
    NameAddr::parse(contact)
        .and_then(|c| Ok(c.parsed_uri()?))
        .map_err(|_| DialogError::Malformed("Contact"))
}

fn cseq_of(headers: &Headers) -> Result<CSeq, DialogError> {
    headers
        .get(&HeaderName::CSeq)
        .and_then(|c| CSeq::parse(c).ok())
        .ok_or(DialogError::Malformed("CSeq"))
}

impl Dialog {
    /// The UAC's dialog from its INVITE and a response carrying a To tag (§12.1.2).
    pub fn from_uac(request: &Request, response: &Response) -> Result<Self, DialogError> {
        let id = DialogId::of_response(response).ok_or(DialogError::Malformed("tags"))?;
        let mut route_set: Vec<String> = response
            .headers
            .get_all(&HeaderName::RecordRoute)
            .map(str::to_owned)
            .collect();
        route_set.reverse();
        Ok(Self {
            id,
            state: if response.status < 200 {
                DialogState::Early
            } else {
                DialogState::Confirmed
            },
            local_seq: cseq_of(&request.headers)?.seq,
            remote_seq: None,
            local_uri: without_tag(
                request
                    .headers
                    .get(&HeaderName::From)
                    .ok_or(DialogError::Malformed("From"))?,
            )?,
            remote_uri: without_tag(
                response
                    .headers
                    .get(&HeaderName::To)
                    .ok_or(DialogError::Malformed("To"))?,
            )?,
            remote_target: contact_uri(&response.headers)?,
            route_set,
            secure: request.uri.as_sip().is_some_and(|u| u.secure),
        })
    }

    /// The UAS's dialog from the request it answers with `local_tag` (§12.1.1); `state` is
    /// early for a 1xx, confirmed for a 2xx.
    pub fn from_uas(
        request: &Request,
        local_tag: &str,
        state: DialogState,
    ) -> Result<Self, DialogError> {
        let call_id = request
            .headers
            .get(&HeaderName::CallId)
            .ok_or(DialogError::Malformed("Call-ID"))?;
        let remote_tag = tag_of(&request.headers, &HeaderName::From).unwrap_or_default();
        Ok(Self {
            id: DialogId {
                call_id: call_id.to_owned(),
                local_tag: local_tag.to_owned(),
                remote_tag,
            },
            state,
            local_seq: 0,
            remote_seq: Some(cseq_of(&request.headers)?.seq),
            local_uri: without_tag(
                request
                    .headers
                    .get(&HeaderName::To)
                    .ok_or(DialogError::Malformed("To"))?,
            )?,
            remote_uri: without_tag(
                request
                    .headers
                    .get(&HeaderName::From)
                    .ok_or(DialogError::Malformed("From"))?,
            )?,
            remote_target: contact_uri(&request.headers)?,
            route_set: request
                .headers
                .get_all(&HeaderName::RecordRoute)
                .map(str::to_owned)
                .collect(),
            secure: request.uri.as_sip().is_some_and(|u| u.secure),
        })
    }

    /// Builds a request inside the dialog (§12.2.1.1). `via` is our top Via (with a fresh
    /// branch) and `contact` our Contact URI. ACK and CANCEL reuse the INVITE's CSeq number
    /// (`local_seq` unchanged); other methods take the next number.
    pub fn request(
        &mut self,
        method: Method,
        via: &str,
        contact: &str,
        body: Bytes,
        content_type: Option<&str>,
    ) -> Request {
        let seq = match method {
            Method::Ack | Method::Cancel => self.local_seq,
            _ => {
                self.local_seq += 1;
                self.local_seq
            }
        };
        let mut headers = Headers::new();
        headers.push(HeaderName::Via, via);
        headers.push(HeaderName::MaxForwards, "70");
        let (uri, routes) = self.request_uri_and_routes();
        for route in routes {
            headers.push(HeaderName::Route, route);
        }
        headers.push(
            HeaderName::From,
            format!("{};tag={}", self.local_uri, self.id.local_tag),
        );
        let to = if self.id.remote_tag.is_empty() {
            self.remote_uri.clone()
        } else {
            format!("{};tag={}", self.remote_uri, self.id.remote_tag)
        };
        headers.push(HeaderName::To, to);
        headers.push(HeaderName::CallId, self.id.call_id.clone());
        headers.push(HeaderName::CSeq, format!("{seq} {method}"));
        if method != Method::Ack && method != Method::Cancel && method != Method::Bye {
            headers.push(HeaderName::Contact, format!("<{contact}>"));
        }
        if let Some(content_type) = content_type {
            headers.push(HeaderName::ContentType, content_type);
        }
        Request {
            method,
            uri,
            version: (2, 0),
            headers,
            body,
        }
    }

    /// The Request-URI and Route values for a new request (§12.2.1.1).
    fn request_uri_and_routes(&self) -> (Uri, Vec<String>) {
        let Some(first) = self.route_set.first() else {
            return (self.remote_target.clone(), Vec::new());
        };
        let first_uri = NameAddr::parse(first)
            .ok()
            .and_then(|r| r.parsed_uri().ok());
        let loose = first_uri
            .as_ref()
            .and_then(Uri::as_sip)
            .is_some_and(|u| u.param("lr").is_some());
        match first_uri {
            Some(uri) if !loose => {
                // Strict routing: the first route becomes the Request-URI (without its
                // parameters the RFC disallows there), the remote target the last route.
                let mut routes: Vec<String> = self.route_set[1..].to_vec();
                routes.push(format!("<{}>", self.remote_target));
                (uri, routes)
            }
            _ => (self.remote_target.clone(), self.route_set.clone()),
        }
    }

    /// Checks and records a request received in this dialog (§12.2.2), refreshing the remote
    /// target on re-INVITE and UPDATE. ACK and CANCEL carry the INVITE's number and are not
    /// checked against it.
    pub fn handle_request(&mut self, request: &Request) -> Result<(), DialogError> {
        let cseq = cseq_of(&request.headers)?;
        if !matches!(request.method, Method::Ack | Method::Cancel) {
            if self.remote_seq.is_some_and(|last| cseq.seq <= last) {
                return Err(DialogError::CSeqOutOfOrder);
            }
            self.remote_seq = Some(cseq.seq);
        }
        if matches!(request.method, Method::Invite | Method::Update)
            && let Ok(target) = contact_uri(&request.headers)
        {
            self.remote_target = target;
        }
        Ok(())
    }

    /// Applies a response to one of our requests: a 2xx confirms an early dialog, and a 2xx
    /// to a re-INVITE or UPDATE refreshes the remote target (§12.2.1.2).
    pub fn handle_response(&mut self, method: &Method, response: &Response) {
        if (200..300).contains(&response.status) {
            self.state = DialogState::Confirmed;
            if matches!(method, Method::Invite | Method::Update)
                && let Ok(target) = contact_uri(&response.headers)
            {
                self.remote_target = target;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Limits, Message};

    fn parse(text: &str) -> Message {
        Message::parse(text.replace('\n', "\r\n").as_bytes(), &Limits::default()).unwrap()
    }

    fn invite() -> Request {
        let Message::Request(r) = parse(
            "INVITE sip:bob@biloxi.com SIP/2.0\n\
             Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds\n\
             Max-Forwards: 70\n\
             To: Bob <sip:bob@biloxi.com>\n\
             From: Alice <sip:alice@atlanta.com>;tag=1928301774\n\
             Call-ID: a84b4c76e66710@pc33.atlanta.com\n\
             CSeq: 314159 INVITE\n\
             Contact: <sip:alice@pc33.atlanta.com>\n\
             Record-Route: <sip:p2.biloxi.com;lr>, <sip:p1.atlanta.com;lr>\n\
             Content-Length: 0\n\n",
        ) else {
            panic!()
        };
        r
    }

    fn ok(status: u16) -> Response {
        let Message::Response(r) = parse(&format!(
            "SIP/2.0 {status} OK\n\
             Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds\n\
             To: Bob <sip:bob@biloxi.com>;tag=a6c85cf\n\
             From: Alice <sip:alice@atlanta.com>;tag=1928301774\n\
             Call-ID: a84b4c76e66710@pc33.atlanta.com\n\
             CSeq: 314159 INVITE\n\
             Contact: <sip:bob@192.0.2.4>\n\
             Record-Route: <sip:p2.biloxi.com;lr>, <sip:p1.atlanta.com;lr>\n\
             Content-Length: 0\n\n"
        )) else {
            panic!()
        };
        r
    }

    #[test]
    fn uac_dialog_routes_and_counts() {
        let mut dialog = Dialog::from_uac(&invite(), &ok(200)).unwrap();
        assert_eq!(dialog.state, DialogState::Confirmed);
        assert_eq!(
            dialog.id,
            DialogId {
                call_id: "a84b4c76e66710@pc33.atlanta.com".into(),
                local_tag: "1928301774".into(),
                remote_tag: "a6c85cf".into()
            }
        );
        // The UAC reverses the Record-Route of the response.
        assert_eq!(
            dialog.route_set,
            ["<sip:p1.atlanta.com;lr>", "<sip:p2.biloxi.com;lr>"]
        );
        let ack = dialog.request(
            Method::Ack,
            "SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKack",
            "sip:alice@pc33.atlanta.com",
            Bytes::new(),
            None,
        );
        assert_eq!(ack.headers.get(&HeaderName::CSeq), Some("314159 ACK"));
        let bye = dialog.request(
            Method::Bye,
            "SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKbye",
            "sip:alice@pc33.atlanta.com",
            Bytes::new(),
            None,
        );
        assert_eq!(
            bye.uri.to_string(),
            "sip:bob@192.0.2.4",
            "loose routing keeps the remote target"
        );
        assert_eq!(
            bye.headers.get_all(&HeaderName::Route).collect::<Vec<_>>(),
            ["<sip:p1.atlanta.com;lr>", "<sip:p2.biloxi.com;lr>"]
        );
        assert_eq!(bye.headers.get(&HeaderName::CSeq), Some("314160 BYE"));
        assert_eq!(
            bye.headers.get(&HeaderName::To),
            Some("Bob <sip:bob@biloxi.com>;tag=a6c85cf")
        );
        assert_eq!(
            bye.headers.get(&HeaderName::From),
            Some("Alice <sip:alice@atlanta.com>;tag=1928301774")
        );
        // The built request is a valid message.
        Message::parse(&bye.to_bytes(), &Limits::default()).unwrap();
    }

    #[test]
    fn strict_router_moves_target_into_routes() {
        let mut response = ok(200);
        response.headers.remove(&HeaderName::RecordRoute);
        response
            .headers
            .push(HeaderName::RecordRoute, "<sip:strict.example.com>");
        let mut dialog = Dialog::from_uac(&invite(), &response).unwrap();
        let bye = dialog.request(
            Method::Bye,
            "SIP/2.0/UDP h;branch=z9hG4bKx",
            "sip:a@h",
            Bytes::new(),
            None,
        );
        assert_eq!(bye.uri.to_string(), "sip:strict.example.com");
        assert_eq!(
            bye.headers.get_all(&HeaderName::Route).collect::<Vec<_>>(),
            ["<sip:bob@192.0.2.4>"]
        );
    }

    #[test]
    fn uas_dialog_checks_cseq_and_refreshes_target() {
        let invite = invite();
        let mut dialog = Dialog::from_uas(&invite, "uas-tag", DialogState::Early).unwrap();
        assert_eq!(
            dialog.route_set,
            ["<sip:p2.biloxi.com;lr>", "<sip:p1.atlanta.com;lr>"],
            "UAS keeps request order"
        );
        assert_eq!(
            dialog.remote_target.to_string(),
            "sip:alice@pc33.atlanta.com"
        );
        let mut reinvite = invite.clone();
        reinvite.headers.set(HeaderName::CSeq, "314160 INVITE");
        reinvite
            .headers
            .set(HeaderName::Contact, "<sip:alice@192.0.2.99>");
        dialog.handle_request(&reinvite).unwrap();
        assert_eq!(dialog.remote_target.to_string(), "sip:alice@192.0.2.99");
        assert_eq!(
            dialog.handle_request(&reinvite),
            Err(DialogError::CSeqOutOfOrder)
        );
        let mut ack = reinvite.clone();
        ack.method = Method::Ack;
        ack.headers.set(HeaderName::CSeq, "314160 ACK");
        assert_eq!(
            dialog.handle_request(&ack),
            Ok(()),
            "ACK reuses the INVITE's number"
        );
        // Our own first request starts at 1.
        let bye = dialog.request(
            Method::Bye,
            "SIP/2.0/UDP h;branch=z9hG4bKy",
            "sip:b@h",
            Bytes::new(),
            None,
        );
        assert_eq!(bye.headers.get(&HeaderName::CSeq), Some("1 BYE"));
        assert_eq!(
            bye.headers.get(&HeaderName::To),
            Some("Alice <sip:alice@atlanta.com>;tag=1928301774")
        );
    }

    #[test]
    fn early_dialog_confirms_on_2xx_and_ids_match_both_ways() {
        let mut dialog = Dialog::from_uac(&invite(), &ok(180)).unwrap();
        assert_eq!(dialog.state, DialogState::Early);
        let mut ok = ok(200);
        ok.headers.set(HeaderName::Contact, "<sip:bob@192.0.2.5>");
        dialog.handle_response(&Method::Invite, &ok);
        assert_eq!(
            (dialog.state, dialog.remote_target.to_string()),
            (DialogState::Confirmed, "sip:bob@192.0.2.5".to_owned())
        );
        // A BYE from Bob carries From=Bob;tag=a6c85cf, To=Alice;tag=1928301774.
        let bye = Dialog::from_uas(&invite(), "a6c85cf", DialogState::Confirmed)
            .unwrap()
            .request(
                Method::Bye,
                "SIP/2.0/UDP h;branch=z9hG4bKz",
                "sip:bob@h",
                Bytes::new(),
                None,
            );
        assert_eq!(DialogId::of_incoming(&bye), Some(dialog.id.clone()));
    }
}
