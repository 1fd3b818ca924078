//! Resolving a database's nodes (`primary`, `replicas`, `nodes`) and the credentials its lag
//! monitors use.

use super::credentials::server_credentials;
use super::load::Validator;
use super::schema::{Config, DatabaseConfig, NodeEntry, NodeRole};
use super::settings::NodeAddr;
use super::topology::{ConfiguredRole, MonitorLogin, NodeConfig};

impl Validator<'_> {
    /// The database's nodes in order: `primary`, then `replicas`, then `nodes`.
    pub(super) fn nodes(&mut self, name: &str, d: &DatabaseConfig) -> Option<Vec<NodeConfig>> {
        let mut out: Vec<NodeConfig> = Vec::new();
        let mut ok = true;
        let groups: [(&str, &[NodeEntry], NodeRole); 3] = [
            ("primary", d.primary.as_slice(), NodeRole::Primary),
            ("replicas", &d.replicas, NodeRole::Replica),
            ("nodes", &d.nodes, NodeRole::Auto),
        ];
        for (key, entries, default_role) in groups {
            for (i, entry) in entries.iter().enumerate() {
                let index = i.to_string();
                let path: Vec<&str> = if key == "primary" {
                    vec!["databases", name, key]
                } else {
                    vec!["databases", name, key, &index]
                };
                let (addr, role, weight, zone) = match entry {
                    NodeEntry::Addr(a) => (a.as_str(), default_role, 1, None),
                    NodeEntry::Full(t) => (
                        t.addr.as_str(),
                        t.role.unwrap_or(default_role),
                        t.weight.unwrap_or(1),
                        t.zone.clone().filter(|z| !z.is_empty()),
                    ),
                };
                let Some(addr) = NodeAddr::parse(addr) else {
                    self.fail(&path, "expected \"host:port\", e.g. \"127.0.0.1:5432\"");
                    ok = false;
                    continue;
                };
                if out.iter().any(|n| n.addr == addr) {
                    self.fail(&path, format!("{addr} is listed twice"));
                    ok = false;
                    continue;
                }
                let role = match role {
                    NodeRole::Primary => ConfiguredRole::Primary,
                    NodeRole::Replica => ConfiguredRole::Replica,
                    NodeRole::Auto => ConfiguredRole::Auto,
                };
                if role == ConfiguredRole::Primary
                    && out.iter().any(|n| n.role == ConfiguredRole::Primary)
                {
                    self.fail(
                        &path,
                        "a second node with role \"primary\": use role = \"auto\" on every node to let pgtier find the primary",
                    );
                    ok = false;
                    continue;
                }
                out.push(NodeConfig {
                    addr,
                    role,
                    weight,
                    zone,
                });
            }
        }
        if ok && out.is_empty() {
            self.fail(
                &["databases", name],
                "no nodes: set primary = \"host:port\" (and replicas), or nodes = [...] with role = \"auto\"",
            );
            return None;
        }
        if ok
            && !out
                .iter()
                .any(|n| matches!(n.role, ConfiguredRole::Primary | ConfiguredRole::Auto))
        {
            self.fail(
                &["databases", name],
                "no node can be the primary: writes would have nowhere to go",
            );
            return None;
        }
        ok.then_some(out)
    }

    /// The monitors' login: the server credentials of `monitor_user` (database, then global),
    /// else of the first configured user.
    pub(super) fn monitor_login(
        &mut self,
        raw: &Config,
        name: &str,
        d: &DatabaseConfig,
    ) -> Option<MonitorLogin> {
        let dbname = d.dbname.clone().unwrap_or_else(|| name.to_owned());
        let wanted = d.monitor_user.as_ref().or(raw.monitor_user.as_ref());
        let (user_name, user) = match wanted {
            Some(u) => match raw.users.get_key_value(u) {
                Some(found) => found,
                None => {
                    if d.monitor_user.is_some() {
                        self.fail(
                            &["databases", name, "monitor_user"],
                            format!("no [users.{u}] section"),
                        );
                    }
                    return None;
                }
            },
            // Admin-console users are often not database roles: skip them.
            None => match raw
                .users
                .iter()
                .find(|(name, _)| !raw.admin_users.contains(name))
                .or_else(|| raw.users.iter().next())
            {
                Some(first) => first,
                None => {
                    self.fail(
                        &["users"],
                        "no [users.NAME] section: nobody could log in, and the lag monitors need credentials",
                    );
                    return None;
                }
            },
        };
        let (user, password) = server_credentials(user_name, user);
        Some(MonitorLogin {
            user,
            password,
            dbname,
        })
    }
}
