//! The WebSocket URL template: which server to connect to and the path of each client.

use std::net::{Ipv4Addr, SocketAddr};

#[derive(Debug, Clone)]
pub struct Target {
    pub server: SocketAddr,
    /// The Host header.
    pub host: String,
    /// The path and query, with placeholders `{token}`, `{i}`, `{topic}`, `{topics_csv}`.
    path: String,
}

impl Target {
    /// `ws://IP:PORT/path?query` (`localhost` stands for 127.0.0.1; no TLS: the tool
    /// measures the server, not a TLS terminator).
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| format!("{url}: the URL must start with ws://"))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = authority
            .rsplit_once(':')
            .ok_or_else(|| format!("{url}: the URL needs a port"))?;
        let ip: Ipv4Addr = if host == "localhost" {
            Ipv4Addr::LOCALHOST
        } else {
            host.parse()
                .map_err(|_| format!("{url}: the host must be an IPv4 address or localhost"))?
        };
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{url}: bad port {port}"))?;
        Ok(Target {
            server: SocketAddr::from((ip, port)),
            host: authority.to_owned(),
            path: if path.is_empty() { "/" } else { path }.to_owned(),
        })
    }

    pub fn path_for(&self, client: usize, token: Option<&str>, topics: &[String]) -> String {
        let mut path = self.path.replace("{i}", &client.to_string());
        if path.contains("{token}") {
            path = path.replace("{token}", token.unwrap_or(""));
        }
        if path.contains("{topic}") {
            path = path.replace("{topic}", topics.first().map_or("", String::as_str));
        }
        if path.contains("{topics_csv}") {
            path = path.replace("{topics_csv}", &topics.join(","));
        }
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_fills_templates() {
        let target = Target::parse("ws://127.0.0.1:18080/ws?token={token}&c={i}").unwrap();
        assert_eq!(target.server, "127.0.0.1:18080".parse().unwrap());
        assert_eq!(target.host, "127.0.0.1:18080");
        assert_eq!(target.path_for(3, Some("abc"), &[]), "/ws?token=abc&c=3");
        let nchan = Target::parse("ws://localhost:18083/sub?id={topics_csv}").unwrap();
        let topics = vec!["job:1".to_owned(), "job:2".to_owned()];
        assert_eq!(nchan.path_for(0, None, &topics), "/sub?id=job:1,job:2");
        assert!(Target::parse("http://127.0.0.1:1/").is_err());
        assert!(Target::parse("ws://example.com:80/").is_err());
    }
}
