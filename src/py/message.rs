//! `awsiot_rs.Message`: an immutable received message.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyString};

use crate::core::protocol::topic;

static JSON_LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// A message received from the broker. Immutable: setting an attribute raises
/// `AttributeError`.
#[pyclass(frozen, module = "awsiot_rs", name = "Message")]
pub struct PyMessage {
    /// Topic the message was published to.
    #[pyo3(get)]
    topic: Py<PyString>,
    /// Payload bytes.
    #[pyo3(get)]
    payload: Py<PyBytes>,
    /// QoS it was delivered with (0 or 1).
    #[pyo3(get)]
    qos: u8,
    /// Retained flag.
    #[pyo3(get)]
    retain: bool,
    /// DUP flag (the broker says this may be a redelivery).
    #[pyo3(get)]
    dup: bool,
}

impl PyMessage {
    /// Converts a core message (copies the payload into a Python `bytes` once).
    pub fn from_core(py: Python<'_>, m: &crate::core::Message) -> Self {
        Self {
            topic: PyString::new(py, &m.topic).unbind(),
            payload: PyBytes::new(py, &m.payload).unbind(),
            qos: m.qos,
            retain: m.retain,
            dup: m.dup,
        }
    }
}

#[pymethods]
impl PyMessage {
    #[new]
    #[pyo3(signature = (topic, payload=None, qos=0, retain=false, dup=false))]
    fn new(
        py: Python<'_>,
        topic: &str,
        payload: Option<&[u8]>,
        qos: u8,
        retain: bool,
        dup: bool,
    ) -> Self {
        Self {
            topic: PyString::new(py, topic).unbind(),
            payload: PyBytes::new(py, payload.unwrap_or_default()).unbind(),
            qos,
            retain,
            dup,
        }
    }

    /// The payload decoded as UTF-8 (raises `UnicodeDecodeError` if it is not).
    fn text<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.payload.bind(py).call_method1("decode", ("utf-8",))
    }

    /// The payload parsed as JSON (raises `json.JSONDecodeError` / `ValueError` if it is not).
    fn json<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let loads = JSON_LOADS.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
            Ok(py.import("json")?.getattr("loads")?.unbind())
        })?;
        loads.bind(py).call1((self.payload.bind(py),))
    }

    /// Whether this message's topic matches `topic_filter` (MQTT wildcard rules).
    fn matches(&self, py: Python<'_>, topic_filter: &str) -> PyResult<bool> {
        Ok(topic::matches(topic_filter, &self.topic.bind(py).to_cow()?))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "Message(topic={}, payload=<{} bytes>, qos={}, retain={}, dup={})",
            self.topic.bind(py).repr()?,
            self.payload.bind(py).as_bytes().len(),
            self.qos,
            if self.retain { "True" } else { "False" },
            if self.dup { "True" } else { "False" },
        ))
    }

    /// Jupyter's view: topic, flags, size and a short escaped preview of the payload.
    fn _repr_html_(&self, py: Python<'_>) -> PyResult<String> {
        let topic = self.topic.bind(py).to_cow()?;
        let payload = self.payload.bind(py).as_bytes();
        let row = |name: &str, value: &str| {
            format!(
                "<tr><td style=\"text-align:left\">{name}</td>\
                 <td style=\"text-align:left\"><code>{value}</code></td></tr>"
            )
        };
        Ok(format!(
            "<table style=\"border-collapse:collapse\">\
             <caption style=\"text-align:left;font-weight:bold\">awsiot_rs.Message</caption>\
             {}{}{}{}{}{}</table>",
            row("topic", &html_escape(&topic)),
            row("qos", &self.qos.to_string()),
            row("retain", py_bool(self.retain)),
            row("dup", py_bool(self.dup)),
            row("payload", &format!("{} bytes", payload.len())),
            row("preview", &html_escape(&preview(payload))),
        ))
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<bool> {
        let Ok(other) = other.cast::<PyMessage>() else {
            return Ok(false);
        };
        let o = other.get();
        Ok(self.topic.bind(py).to_cow()? == o.topic.bind(py).to_cow()?
            && self.payload.bind(py).as_bytes() == o.payload.bind(py).as_bytes()
            && self.qos == o.qos
            && self.retain == o.retain
            && self.dup == o.dup)
    }

    fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
        (self.topic.bind(py), self.payload.bind(py), self.qos)
            .into_pyobject(py)?
            .hash()
    }
}

/// Characters of a UTF-8 payload shown by `_repr_html_`.
const PREVIEW_CHARS: usize = 64;
/// Bytes of a binary payload shown (in hex) by `_repr_html_`.
const PREVIEW_BYTES: usize = 16;

/// A short preview of a payload: its first characters when it starts as UTF-8 text, else the
/// first bytes in hex; `…` marks a cut.
fn preview(payload: &[u8]) -> String {
    // Look at a bounded prefix only: a payload may be 128 KiB (4 bytes per character at most).
    let head = payload.get(..PREVIEW_CHARS * 4 + 4).unwrap_or(payload);
    let text = match std::str::from_utf8(head) {
        Ok(t) => Some(t),
        // A character cut by the prefix is fine; invalid bytes inside the prefix are not.
        Err(e) if e.error_len().is_none() || e.valid_up_to() >= PREVIEW_CHARS * 4 => head
            .get(..e.valid_up_to())
            .and_then(|h| std::str::from_utf8(h).ok()),
        Err(_) => None,
    };
    match text {
        Some(t) => {
            let shown: String = t.chars().take(PREVIEW_CHARS).collect();
            if shown.len() < payload.len() {
                format!("{shown}…")
            } else {
                shown
            }
        }
        None => {
            let shown: Vec<String> = payload
                .iter()
                .take(PREVIEW_BYTES)
                .map(|b| format!("{b:02x}"))
                .collect();
            let cut = if payload.len() > PREVIEW_BYTES {
                " …"
            } else {
                ""
            };
            format!("{}{cut} (binary)", shown.join(" "))
        }
    }
}

/// `True` / `False`, as Python shows them.
fn py_bool(value: bool) -> &'static str {
    if value {
        "True"
    } else {
        "False"
    }
}

/// `text` with the HTML special characters escaped.
fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{html_escape, preview};

    #[test]
    fn preview_shows_the_start_of_text_and_marks_the_cut() {
        assert_eq!(preview(b"{\"temp\": 21}"), "{\"temp\": 21}");
        let long = "é".repeat(100);
        let shown = preview(long.as_bytes());
        assert_eq!(shown, format!("{}…", "é".repeat(64)));
    }

    #[test]
    fn preview_of_binary_is_a_few_hex_bytes() {
        assert_eq!(preview(&[0xff, 0x00, 0x01]), "ff 00 01 (binary)");
        assert_eq!(
            preview(&[0xff; 40]),
            format!("{} … (binary)", ["ff"; 16].join(" "))
        );
        assert_eq!(preview(b""), "");
    }

    #[test]
    fn html_special_characters_are_escaped() {
        assert_eq!(
            html_escape("<a href='x'>&\"</a>"),
            "&lt;a href=&#x27;x&#x27;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }
}
