//! The `trusted_proxies` key: the reverse proxies whose `X-Forwarded-For` is believed.

use super::yaml::{self, Ctx, Kind, Node};
use crate::proxy::{IpNet, TrustedProxies};

/// Reads a list of addresses and networks (`[127.0.0.1, "10.0.0.0/8", "::1"]`); a single
/// string reads as a list of one. Absent: nobody is trusted.
pub(super) fn compile(ctx: &mut Ctx, node: Option<&Node>) -> Option<TrustedProxies> {
    let Some(node) = node else {
        return Some(TrustedProxies::default());
    };
    let path = "trusted_proxies";
    let items: Vec<(&Node, String)> = match &node.kind {
        Kind::Seq(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| (item, yaml::index(path, i)))
            .collect(),
        Kind::Null => Vec::new(),
        _ => vec![(node, path.to_owned())],
    };
    let mut networks = Vec::with_capacity(items.len());
    let mut ok = true;
    for (item, item_path) in items {
        let Some(text) = yaml::string(ctx, item, &item_path) else {
            ok = false;
            continue;
        };
        match IpNet::parse(&text) {
            Ok(net) => networks.push(net),
            Err(message) => {
                ctx.error(item, &item_path, message);
                ok = false;
            }
        }
    }
    ok.then(|| TrustedProxies::new(networks))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigErrors};
    use crate::proxy::{IpNet, TrustedProxies};

    const ROUTES: &str = "routes:\n  - name: jobs\n    channel: jobs:updates\n";

    fn load(top: &str) -> Result<Config, ConfigErrors> {
        Config::from_str(&format!("{top}{ROUTES}"), Path::new("bridge.yaml"))
    }

    fn nets(texts: &[&str]) -> TrustedProxies {
        TrustedProxies::new(texts.iter().map(|t| IpNet::parse(t).unwrap()).collect())
    }

    #[test]
    fn absent_trusts_nobody_and_lists_or_one_string_are_read() {
        assert_eq!(load("").unwrap().trusted_proxies, TrustedProxies::default());
        assert_eq!(
            load("trusted_proxies: [127.0.0.1, \"10.0.0.0/8\", \"::1\"]\n")
                .unwrap()
                .trusted_proxies,
            nets(&["127.0.0.1", "10.0.0.0/8", "::1"])
        );
        assert_eq!(
            load("trusted_proxies: 192.168.0.0/16\n")
                .unwrap()
                .trusted_proxies,
            nets(&["192.168.0.0/16"])
        );
    }

    #[test]
    fn every_bad_entry_is_reported_at_its_position() {
        let text = "trusted_proxies:\n  - 127.0.0.1\n  - 10.1.0.0/8\n  - nginx.local\n";
        let errors = load(text).unwrap_err().to_string();
        let lines: Vec<&str> = errors.lines().collect();
        assert_eq!(lines.len(), 2, "{errors}");
        assert!(
            lines[0]
                .starts_with("bridge.yaml:3:5: trusted_proxies[1]: `10.1.0.0/8` has host bits set"),
            "{errors}"
        );
        assert!(
            lines[1].starts_with("bridge.yaml:4:5: trusted_proxies[2]: `nginx.local` is not an IP"),
            "{errors}"
        );
    }
}
