//! The files served to browsers (README, "The browser client"): the console page `GET /`
//! with its script and style, and the client library `GET /client.js`. They are compiled in
//! from `assets/` and `clients/js/`, so an installed binary needs no files beside it. Pure:
//! built once, answered from memory.

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use sha2::{Digest, Sha256};
use warp::reply::Response;

/// Where the page reads the WebSocket path from (`data-ws-path`).
const WS_PATH_PLACEHOLDER: &str = "{{WS_PATH}}";

/// What the console page may load and connect to: its own scripts and style, and its own
/// host's WebSocket (`'self'` covers ws:/wss: on the page's host, CSP Level 3). Nothing
/// inline, so frame data rendered into the page can never run.
const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console's files follow a restart (the page names the WebSocket path, the scripts
/// belong to the page's version): revalidated on every load, which the ETag makes cheap.
const REVALIDATE: &str = "no-cache";

/// Applications load the client library from their own pages on every view; an upgraded
/// bridge's library reaches them within five minutes.
const CLIENT_CACHE: &str = "public, max-age=300";

/// One file, with the headers it is served with.
pub struct Asset {
    body: Bytes,
    content_type: &'static str,
    cache_control: &'static str,
    etag: String,
    csp: Option<&'static str>,
}

impl Asset {
    fn new(
        body: impl Into<Bytes>,
        content_type: &'static str,
        cache_control: &'static str,
        csp: Option<&'static str>,
    ) -> Asset {
        let body = body.into();
        let digest = Sha256::digest(&body);
        let etag: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        Asset {
            body,
            content_type,
            cache_control,
            etag: format!("\"{etag}\""),
            csp,
        }
    }

    /// 200 with the file, or 304 when `if_none_match` names this version.
    pub fn reply(&self, if_none_match: Option<&str>) -> Response {
        let unchanged = if_none_match.is_some_and(|tags| {
            tags.split(',')
                .map(str::trim)
                .any(|tag| tag == "*" || tag.trim_start_matches("W/") == self.etag)
        });
        let mut response = if unchanged {
            let mut response = Response::new(Default::default());
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            response
        } else {
            let mut response = Response::new(self.body.clone().into());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(self.content_type),
            );
            if let Some(csp) = self.csp {
                let headers = response.headers_mut();
                headers.insert(
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(csp),
                );
                headers.insert(
                    header::REFERRER_POLICY,
                    HeaderValue::from_static("no-referrer"),
                );
            }
            response
        };
        let headers = response.headers_mut();
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(self.cache_control),
        );
        if let Ok(etag) = HeaderValue::from_str(&self.etag) {
            headers.insert(header::ETAG, etag);
        }
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        response
    }
}

/// Every file, the page already carrying the WebSocket path.
pub struct Assets {
    page: Asset,
    console_js: Asset,
    console_css: Asset,
    client_js: Asset,
}

impl Assets {
    /// `ws_path` is the `websocket.path` the listener serves, which a reload does not change.
    pub fn new(ws_path: &str) -> Assets {
        let page = include_str!("../assets/console.html")
            .replace(WS_PATH_PLACEHOLDER, &escape_attribute(ws_path));
        Assets {
            page: Asset::new(
                page,
                "text/html; charset=utf-8",
                REVALIDATE,
                Some(CONSOLE_CSP),
            ),
            console_js: Asset::new(
                include_str!("../assets/console.js"),
                "text/javascript; charset=utf-8",
                REVALIDATE,
                None,
            ),
            console_css: Asset::new(
                include_str!("../assets/console.css"),
                "text/css; charset=utf-8",
                REVALIDATE,
                None,
            ),
            client_js: Asset::new(
                include_str!("../clients/js/client.js"),
                "text/javascript; charset=utf-8",
                CLIENT_CACHE,
                None,
            ),
        }
    }

    /// The file at `path`; the console's only while `console` is on. The client library is
    /// always served: applications load it whether or not operators use the console.
    pub fn get(&self, path: &str, console: bool) -> Option<&Asset> {
        match path {
            "/client.js" => Some(&self.client_js),
            "/" if console => Some(&self.page),
            "/console.js" if console => Some(&self.console_js),
            "/console.css" if console => Some(&self.console_css),
            _ => None,
        }
    }
}

/// `text` as an HTML attribute value (double-quoted).
fn escape_attribute(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_carries_the_escaped_websocket_path() {
        assert!(include_str!("../assets/console.html").contains(WS_PATH_PLACEHOLDER));
        let assets = Assets::new("/live/\"x\"&<y>");
        let page = std::str::from_utf8(&assets.page.body).unwrap();
        assert!(page.contains(r#"data-ws-path="/live/&quot;x&quot;&amp;&lt;y&gt;""#));
        assert!(!page.contains(WS_PATH_PLACEHOLDER));
    }

    #[test]
    fn a_matching_if_none_match_gets_304() {
        let assets = Assets::new("/ws");
        let asset = assets.get("/client.js", false).unwrap();
        let etag = asset.etag.clone();
        assert_eq!(asset.reply(None).status(), StatusCode::OK);
        for tags in [
            etag.clone(),
            format!("W/{etag}"),
            format!("\"x\", {etag}"),
            "*".into(),
        ] {
            let response = asset.reply(Some(&tags));
            assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{tags}");
            assert_eq!(response.headers()[header::ETAG], etag.as_str());
        }
        assert_eq!(asset.reply(Some("\"other\"")).status(), StatusCode::OK);
    }

    #[test]
    fn console_files_only_while_the_console_is_on() {
        let assets = Assets::new("/ws");
        for path in ["/", "/console.js", "/console.css", "/client.js"] {
            assert!(assets.get(path, true).is_some(), "{path}");
        }
        assert!(assets.get("/client.js", false).is_some());
        for path in [
            "/",
            "/console.js",
            "/console.css",
            "/index.html",
            "/client.js/",
        ] {
            assert!(assets.get(path, false).is_none(), "{path}");
        }
    }
}
