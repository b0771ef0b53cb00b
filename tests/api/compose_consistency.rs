//! The deployment files against the binary: docker-compose.yml, .env.example,
//! the Dockerfile and README.md may only name subcommands `verimail` really
//! has and variables it really reads (`verimail::config::VARIABLES`), and
//! must name every variable it reads. A setting renamed on one side only
//! fails here with the variable's name.
//!
//! Also: the CI override (.ci/compose/docker-compose.ci.yml) only swaps
//! images for services the shipped file has, and the development bootstrap
//! credentials, the mail catcher's API and ports are the same in
//! docker-compose.yml, README.md and scripts/compose-e2e.sh (the test CI
//! runs), so that the README's compose e2e example is what CI exercises.
//!
//! And Prometheus (profile `observability`): only in its profile, reading
//! deploy/prometheus/, whose scrape targets are the ports the intake and the
//! workers really serve metrics on, published where the README and the e2e
//! look for it.
//!
//! Needs no Docker: the compose file is read as YAML, the subcommands are
//! checked by running the freshly built binary with `--help`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use serde_yaml_ng::Value;
use verimail::config::VARIABLES;

/// Names that, when set for a verimail container, must be ones it reads.
fn is_verimail_setting(name: &str) -> bool {
    name.starts_with("VERIMAIL_")
        || ["DATABASE_URL", "AMQP_URL", "SMTP_URL", "RUST_LOG"].contains(&name)
}

fn known() -> BTreeSet<&'static str> {
    VARIABLES.iter().map(|(name, _, _)| *name).collect()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(file: &str) -> String {
    std::fs::read_to_string(root().join(file)).unwrap_or_else(|e| panic!("reading {file}: {e}"))
}

fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}:\n  - {}",
        problems.join("\n  - ")
    );
}

// --- env files ------------------------------------------------------------

/// One `NAME=value` line of an env file, or a commented-out `# NAME=value`.
#[derive(Debug)]
struct EnvEntry {
    name: String,
    value: String,
    /// `# NAME=value`: documented, but not set.
    commented_out: bool,
    /// The comment lines right above it.
    comment: String,
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_uppercase() || c == '_')
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn assignment(line: &str) -> Option<(String, String)> {
    let line = line.strip_prefix("export ").unwrap_or(line);
    let (name, value) = line.split_once('=')?;
    if !is_env_name(name) {
        return None;
    }
    let value = value.trim();
    let unquoted = ['"', '\'']
        .iter()
        .find_map(|q| value.strip_prefix(*q)?.strip_suffix(*q))
        .unwrap_or(value);
    Some((name.to_owned(), unquoted.to_owned()))
}

/// Reads env-file syntax as Compose does for plain `NAME=value` lines.
fn parse_env_file(text: &str) -> Vec<EnvEntry> {
    let mut entries = Vec::new();
    let mut comment = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() {
            comment.clear();
        } else if let Some(rest) = line.strip_prefix('#') {
            if let Some((name, value)) = assignment(rest.trim()) {
                entries.push(EnvEntry {
                    name,
                    value,
                    commented_out: true,
                    comment: std::mem::take(&mut comment),
                });
            } else {
                comment.push_str(rest.trim());
                comment.push('\n');
            }
        } else if let Some((name, value)) = assignment(line) {
            entries.push(EnvEntry {
                name,
                value,
                commented_out: false,
                comment: std::mem::take(&mut comment),
            });
        } else {
            comment.clear();
        }
    }
    entries
}

// --- Dockerfile -----------------------------------------------------------

/// Instructions of the Dockerfile's final stage, continuation lines joined.
fn final_stage_instructions() -> Vec<String> {
    let text = read("Dockerfile");
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        // Comment lines are dropped even inside a continued instruction.
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            instructions.push(std::mem::take(&mut current));
        }
    }
    let last_from = instructions
        .iter()
        .rposition(|i| i.to_ascii_uppercase().starts_with("FROM "))
        .expect("the Dockerfile has a FROM");
    instructions.split_off(last_from)
}

/// `ENV` settings of the final stage: every container starts with them.
fn dockerfile_env() -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for instruction in final_stage_instructions() {
        let Some(args) = instruction.strip_prefix("ENV ") else {
            continue;
        };
        let words: Vec<&str> = args.split_whitespace().collect();
        match words.first() {
            Some(first) if !first.contains('=') => {
                env.insert((*first).to_owned(), words[1..].join(" "));
            }
            _ => {
                for word in words {
                    let (name, value) = word.split_once('=').unwrap();
                    env.insert(name.to_owned(), value.trim_matches('"').to_owned());
                }
            }
        }
    }
    env
}

// --- docker-compose.yml -----------------------------------------------------

fn compose() -> Value {
    let mut value: Value =
        serde_yaml_ng::from_str(&read("docker-compose.yml")).expect("docker-compose.yml is YAML");
    value.apply_merge().expect("YAML merge keys resolve");
    value
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

fn words(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Sequence(items)) => items.iter().map(scalar).collect(),
        _ => Vec::new(),
    }
}

/// A service that runs the verimail image.
struct Service {
    name: String,
    command: Vec<String>,
    /// What the container gets, lowest layer first: the Dockerfile's `ENV`,
    /// then each env file in order, then `environment:`.
    env: BTreeMap<String, String>,
    /// Where each name in `env` was last set.
    origin: BTreeMap<String, String>,
    healthcheck: String,
    container_ports: Vec<u16>,
    raw: Value,
}

impl Service {
    fn role(&self) -> &str {
        self.command.first().map_or("", String::as_str)
    }
}

fn uses_verimail_image(service: &Value) -> bool {
    let image = service.get("image").map(scalar).unwrap_or_default();
    let repository = image.split(':').next().unwrap_or("");
    service.get("build").is_some() || repository.rsplit('/').next() == Some("verimail")
}

/// The env files a service loads that are part of the repository; optional
/// ones (`required: false`, the developer's own `.env`) are local state.
fn required_env_files(service: &Value) -> Vec<String> {
    let items = match service.get("env_file") {
        Some(Value::Sequence(items)) => items.clone(),
        Some(single) => vec![single.clone()],
        None => Vec::new(),
    };
    items
        .iter()
        .filter_map(|item| match item {
            Value::String(path) => Some(path.clone()),
            Value::Mapping(_) => {
                let required = item.get("required").and_then(Value::as_bool) != Some(false);
                item.get("path").map(scalar).filter(|_| required)
            }
            _ => None,
        })
        .map(|path| path.trim_start_matches("./").to_owned())
        .collect()
}

fn container_ports(service: &Value) -> Vec<u16> {
    let Some(Value::Sequence(ports)) = service.get("ports") else {
        return Vec::new();
    };
    ports
        .iter()
        .filter_map(|port| match port {
            Value::Mapping(_) => scalar(port.get("target")?).parse().ok(),
            other => {
                let spec = scalar(other);
                let target = spec.rsplit(':').next()?.split('/').next()?.to_owned();
                target.parse().ok()
            }
        })
        .collect()
}

fn verimail_services(compose: &Value, problems: &mut Vec<String>) -> Vec<Service> {
    let base_env = dockerfile_env();
    let services = compose
        .get("services")
        .and_then(Value::as_mapping)
        .expect("docker-compose.yml has services");
    let mut found = Vec::new();
    for (name, service) in services {
        if !uses_verimail_image(service) {
            continue;
        }
        let name = scalar(name);
        let mut env = base_env.clone();
        let mut origin: BTreeMap<String, String> = base_env
            .keys()
            .map(|k| (k.clone(), "Dockerfile ENV".to_owned()))
            .collect();
        for file in required_env_files(service) {
            let Ok(text) = std::fs::read_to_string(root().join(&file)) else {
                problems.push(format!(
                    "service `{name}` loads env file {file}, which does not exist"
                ));
                continue;
            };
            for entry in parse_env_file(&text)
                .into_iter()
                .filter(|e| !e.commented_out)
            {
                origin.insert(entry.name.clone(), file.clone());
                env.insert(entry.name, entry.value);
            }
        }
        match service.get("environment") {
            Some(Value::Mapping(map)) => {
                for (key, value) in map {
                    origin.insert(scalar(key), "environment:".to_owned());
                    env.insert(scalar(key), scalar(value));
                }
            }
            Some(Value::Sequence(list)) => {
                for item in list.iter().map(scalar) {
                    let (key, value) = item.split_once('=').unwrap_or((&item, ""));
                    origin.insert(key.to_owned(), "environment:".to_owned());
                    env.insert(key.to_owned(), value.to_owned());
                }
            }
            _ => {}
        }
        found.push(Service {
            command: words(service.get("command")),
            healthcheck: words(service.get("healthcheck").and_then(|h| h.get("test"))).join(" "),
            container_ports: container_ports(service),
            raw: service.clone(),
            name,
            env,
            origin,
        });
    }
    found
}

// --- the checks -------------------------------------------------------------

#[test]
fn compose_commands_are_real_subcommands() {
    let mut problems = Vec::new();
    let services = verimail_services(&compose(), &mut problems);
    for service in &services {
        if service.raw.get("entrypoint").is_some() {
            problems.push(format!(
                "service `{}` overrides the entrypoint; the commands below assume the image's `verimail`",
                service.name
            ));
        }
        let subcommand: Vec<&String> = service
            .command
            .iter()
            .take_while(|w| !w.starts_with('-'))
            .collect();
        if subcommand.is_empty() {
            problems.push(format!(
                "service `{}` has no `command:`; the image would only print its help",
                service.name
            ));
            continue;
        }
        let output = Command::new(env!("CARGO_BIN_EXE_verimail"))
            .args(&subcommand)
            .arg("--help")
            .output()
            .expect("running the verimail binary");
        if !output.status.success() {
            problems.push(format!(
                "service `{}` runs `verimail {}`, which is not a verimail subcommand: {}",
                service.name,
                service.command.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
    }
    let roles: BTreeSet<&str> = services.iter().map(Service::role).collect();
    for role in ["migrate", "intake", "worker"] {
        if !roles.contains(role) {
            problems.push(format!("no service runs `verimail {role}`"));
        }
    }
    if !final_stage_instructions()
        .iter()
        .any(|i| i == r#"ENTRYPOINT ["verimail"]"#)
    {
        problems.push(r#"the Dockerfile's final stage lacks ENTRYPOINT ["verimail"]"#.to_owned());
    }
    assert_no_problems("docker-compose.yml commands", &problems);
}

#[test]
fn compose_sets_only_variables_verimail_reads() {
    let known = known();
    let mut problems = Vec::new();
    for service in verimail_services(&compose(), &mut problems) {
        for name in service.env.keys() {
            if is_verimail_setting(name) && !known.contains(name.as_str()) {
                problems.push(format!(
                    "service `{}` sets {name} (in {}), which verimail does not read: \
                     it is not in verimail::config::VARIABLES (src/config.rs)",
                    service.name, service.origin[name]
                ));
            }
        }
    }
    assert_no_problems("variables set for verimail containers", &problems);
}

#[test]
fn compose_wiring_matches_the_services() {
    let compose = compose();
    let mut problems = Vec::new();
    let services = compose.get("services").and_then(Value::as_mapping).unwrap();
    let service_env = |host: &str, key: &str| {
        services
            .get(host)
            .and_then(|s| s.get("environment"))
            .and_then(|e| e.get(key))
            .map(scalar)
    };
    for service in verimail_services(&compose, &mut problems) {
        let name = &service.name;
        for var in ["DATABASE_URL", "AMQP_URL", "SMTP_URL"] {
            let Some(raw) = service.env.get(var).filter(|v| !v.is_empty()) else {
                continue;
            };
            let Ok(url) = url::Url::parse(raw) else {
                problems.push(format!("service `{name}`: {var}={raw} is not a URL"));
                continue;
            };
            let host = url.host_str().unwrap_or("");
            if !services.contains_key(host) {
                problems.push(format!(
                    "service `{name}`: {var} points at host `{host}`, which is not a service of docker-compose.yml"
                ));
                continue;
            }
            if var == "DATABASE_URL" {
                let expected = [
                    ("POSTGRES_USER", url.username().to_owned()),
                    ("POSTGRES_PASSWORD", url.password().unwrap_or("").to_owned()),
                    ("POSTGRES_DB", url.path().trim_start_matches('/').to_owned()),
                ];
                for (key, in_url) in expected {
                    if let Some(configured) = service_env(host, key) {
                        if configured != in_url {
                            problems.push(format!(
                                "service `{name}`: DATABASE_URL has `{in_url}` where service `{host}` has {key}={configured}"
                            ));
                        }
                    }
                }
            }
        }
        let listens = match service.role() {
            "intake" | "all" => vec!["VERIMAIL_LISTEN"],
            "worker" => vec!["VERIMAIL_METRICS_LISTEN"],
            _ => vec![],
        };
        for var in listens {
            let value = service
                .env
                .get(var)
                .cloned()
                .unwrap_or_else(|| verimail::config::default_of(var).to_owned());
            let Ok(addr) = value.parse::<SocketAddr>() else {
                problems.push(format!("service `{name}`: {var}={value} is not an address"));
                continue;
            };
            if !addr.ip().is_unspecified() {
                problems.push(format!(
                    "service `{name}`: {var}={value} is unreachable from outside the container; use 0.0.0.0:{}",
                    addr.port()
                ));
            }
            let port = addr.port();
            if var == "VERIMAIL_LISTEN" && !service.container_ports.contains(&port) {
                problems.push(format!(
                    "service `{name}` listens on port {port} ({var}) but publishes {:?}",
                    service.container_ports
                ));
            }
            // Every long-running role has a health check, on its own port.
            if !service.healthcheck.contains(&format!("/{port}"))
                && !service.healthcheck.contains(&format!(":{port}"))
            {
                problems.push(format!(
                    "service `{name}` listens on port {port} ({var}) but its healthcheck does not use that port: {}",
                    service.healthcheck
                ));
            }
        }
    }
    assert_no_problems("docker-compose.yml wiring", &problems);
}

#[test]
fn env_example_lists_exactly_the_variables_verimail_reads() {
    let known = known();
    let entries = parse_env_file(&read(".env.example"));
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for entry in &entries {
        if !seen.insert(entry.name.as_str()) {
            problems.push(format!(".env.example lists {} twice", entry.name));
        }
        if !known.contains(entry.name.as_str()) {
            problems.push(format!(
                ".env.example lists {}, which verimail does not read: \
                 it is not in verimail::config::VARIABLES (src/config.rs)",
                entry.name
            ));
        }
    }
    for (name, default, meaning) in VARIABLES {
        let Some(entry) = entries.iter().find(|e| e.name == *name) else {
            problems.push(format!(
                ".env.example lacks {name} ({meaning}; default `{default}`), \
                 which verimail reads (verimail::config::VARIABLES)"
            ));
            continue;
        };
        let says = if default.is_empty() {
            "Default: unset".to_owned()
        } else {
            format!("Default: {default}")
        };
        if !entry.comment.contains(&says) {
            problems.push(format!(
                ".env.example: the comment above {name} must say what it does and `{says}` \
                 (as in src/config.rs); it says: {:?}",
                entry.comment.trim()
            ));
        }
    }
    assert_no_problems(".env.example against src/config.rs", &problems);
}

#[test]
fn readme_documents_every_variable() {
    let path = root().join("README.md");
    if !path.exists() {
        eprintln!("SKIPPED: README.md does not exist yet, so its variables cannot be checked");
        return;
    }
    let readme = read("README.md");
    let problems: Vec<String> = VARIABLES
        .iter()
        .filter(|(name, _, _)| !readme.contains(&format!("`{name}`")))
        .map(|(name, default, meaning)| {
            format!(
                "README.md never mentions `{name}` ({meaning}; default `{default}`), \
                 which verimail reads (verimail::config::VARIABLES)"
            )
        })
        .collect();
    assert_no_problems("README.md against src/config.rs", &problems);
}

// --- the CI override, the dev bootstrap and the mail catcher ------------------

fn yaml(file: &str) -> Value {
    // `!reset` / `!override` are Compose's merge tags; as YAML they are tags
    // on ordinary values.
    let mut value: Value =
        serde_yaml_ng::from_str(&read(file)).unwrap_or_else(|e| panic!("{file} is YAML: {e}"));
    value.apply_merge().expect("YAML merge keys resolve");
    value
}

fn untagged(value: &Value) -> &Value {
    match value {
        Value::Tagged(tagged) => &tagged.value,
        other => other,
    }
}

#[test]
fn ci_override_only_swaps_images_of_the_shipped_services() {
    let shipped = compose();
    let shipped = shipped.get("services").and_then(Value::as_mapping).unwrap();
    let ci = yaml(".ci/compose/docker-compose.ci.yml");
    let known = known();
    let mut problems = Vec::new();
    let allowed = ["image", "build", "ports", "environment"];
    for (name, service) in ci.get("services").and_then(Value::as_mapping).unwrap() {
        let name = scalar(name);
        let Some(base) = shipped.get(name.as_str()) else {
            problems.push(format!(
                "the CI override has service `{name}`, which docker-compose.yml does not"
            ));
            continue;
        };
        for (key, value) in service.as_mapping().unwrap() {
            let key = scalar(key);
            if !allowed.contains(&key.as_str()) {
                problems.push(format!(
                    "the CI override changes `{key}` of `{name}`; it may only change {allowed:?}, \
                     so that CI runs the shipped stack"
                ));
            }
            if key == "build" && !uses_verimail_image(base) {
                problems.push(format!(
                    "the CI override builds `{name}`, which is not verimail"
                ));
            }
            if key == "environment" {
                for (var, _) in untagged(value).as_mapping().into_iter().flatten() {
                    let var = scalar(var);
                    if is_verimail_setting(&var) && !known.contains(var.as_str()) {
                        problems.push(format!(
                            "the CI override sets {var} for `{name}`, which verimail does not read"
                        ));
                    }
                }
            }
        }
    }
    assert_no_problems(".ci/compose/docker-compose.ci.yml", &problems);
}

/// `NAME=value` assignments at the top of a shell script.
fn shell_constant(script: &str, name: &str) -> Option<String> {
    read(script)
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}=")).map(str::to_owned))
}

#[test]
fn dev_bootstrap_credentials_agree_everywhere() {
    let compose = compose();
    let migrate = compose
        .get("services")
        .and_then(|s| s.get("migrate"))
        .expect("docker-compose.yml has a migrate service");
    let env = |var: &str| {
        migrate
            .get("environment")
            .and_then(|e| e.get(var))
            .map(scalar)
            .unwrap_or_default()
    };
    let mut problems = Vec::new();
    if env("VERIMAIL_DEV_BOOTSTRAP") != "true" {
        problems.push("migrate does not set VERIMAIL_DEV_BOOTSTRAP: \"true\"".to_owned());
    }
    let partner = match env("VERIMAIL_DEV_PARTNER_ID") {
        p if p.is_empty() => verimail::config::default_of("VERIMAIL_DEV_PARTNER_ID").to_owned(),
        p => p,
    };
    let domain_id = partner.replace('-', "");
    let readme = read("README.md");
    let script = "scripts/compose-e2e.sh";
    for (var, value, constant) in [
        ("VERIMAIL_DEV_TOKEN", env("VERIMAIL_DEV_TOKEN"), "DEV_TOKEN"),
        (
            "VERIMAIL_DEV_ACCESS_KEY",
            env("VERIMAIL_DEV_ACCESS_KEY"),
            "DEV_AK",
        ),
        (
            "VERIMAIL_DEV_SECRET_KEY",
            env("VERIMAIL_DEV_SECRET_KEY"),
            "DEV_SK",
        ),
        ("domain_id", domain_id, "DEV_DOMAIN_ID"),
    ] {
        if value.is_empty() {
            problems.push(format!("migrate in docker-compose.yml does not set {var}"));
            continue;
        }
        if !readme.contains(&format!("`{value}`")) {
            problems.push(format!(
                "README.md does not show {var} as `{value}` (docker-compose.yml's migrate)"
            ));
        }
        if shell_constant(script, constant).as_deref() != Some(value.as_str()) {
            problems.push(format!(
                "{script}: {constant} is {:?}, docker-compose.yml's migrate has {var}={value}",
                shell_constant(script, constant)
            ));
        }
    }
    assert_no_problems("development bootstrap credentials", &problems);
}

#[test]
fn mail_catcher_api_is_where_the_readme_and_the_test_read_it() {
    let compose = compose();
    let services = compose.get("services").and_then(Value::as_mapping).unwrap();
    let mut problems = Vec::new();
    // The host the workers' SMTP_URL names is the catcher.
    let smtp = verimail_services(&compose, &mut problems)
        .into_iter()
        .find(|s| s.role() == "worker")
        .and_then(|s| s.env.get("SMTP_URL").cloned())
        .expect("the worker has SMTP_URL");
    let smtp = url::Url::parse(&smtp).unwrap();
    let host = smtp.host_str().unwrap().to_owned();
    let catcher = services
        .get(host.as_str())
        .expect("SMTP_URL names a service");
    let image = catcher.get("image").map(scalar).unwrap_or_default();
    if !image.starts_with("maildev/maildev:") {
        problems.push(format!(
            "the catcher `{host}` runs {image}; README.md, the CI stand-in \
             (.ci/compose/maildev) and scripts/compose-e2e.sh speak MailDev's API"
        ));
    }
    let version = image.rsplit(':').next().unwrap_or("");
    let lock = read(".ci/compose/maildev/package.json");
    if !lock.contains(&format!("\"maildev\": \"{version}\"")) {
        problems.push(format!(
            "the CI stand-in's .ci/compose/maildev/package.json does not pin maildev {version}"
        ));
    }
    let published: Vec<String> = match catcher.get("ports") {
        Some(Value::Sequence(ports)) => ports.iter().map(scalar).collect(),
        _ => Vec::new(),
    };
    if !published.iter().any(|p| p == "127.0.0.1:1080:1080") {
        problems.push(format!(
            "`{host}` does not publish its web API as 127.0.0.1:1080:1080: {published:?}"
        ));
    }
    let api = "http://127.0.0.1:1080/email?to.address=";
    if !read("README.md").contains(api) {
        problems.push(format!(
            "README.md does not show the catcher's API call {api}…"
        ));
    }
    if shell_constant("scripts/compose-e2e.sh", "MAIL_API").as_deref()
        != Some("http://127.0.0.1:1080")
    {
        problems.push("scripts/compose-e2e.sh does not read mail at http://127.0.0.1:1080".into());
    }
    assert_no_problems("mail catcher", &problems);
}

// --- Prometheus (profile `observability`) -----------------------------------

/// The container port of `port` in `service`'s `expose:` list.
fn exposes(service: &Value, port: u16) -> bool {
    words(service.get("expose"))
        .iter()
        .any(|p| p.split('/').next() == Some(&port.to_string()))
}

/// The port a verimail role serves `/metrics` on (its env, else the default).
fn metrics_port(service: &Service, var: &str) -> Option<u16> {
    let value = service
        .env
        .get(var)
        .cloned()
        .unwrap_or_else(|| verimail::config::default_of(var).to_owned());
    value.parse::<SocketAddr>().ok().map(|a| a.port())
}

#[test]
fn prometheus_scrapes_the_stack_in_its_own_profile() {
    let compose = compose();
    let services = compose.get("services").and_then(Value::as_mapping).unwrap();
    let prometheus = services
        .get("prometheus")
        .expect("docker-compose.yml has a `prometheus` service");
    let mut problems = Vec::new();

    // Only with `--profile observability`: the default stack stays as it is.
    let profiles = words(prometheus.get("profiles"));
    if profiles != ["observability"] {
        problems.push(format!(
            "`prometheus` must be in the profile `observability` only, so that a plain \
             `docker compose up` does not start it; it has profiles {profiles:?}"
        ));
    }
    let image = prometheus.get("image").map(scalar).unwrap_or_default();
    match image.rsplit_once(':') {
        Some(("prom/prometheus", tag)) if !tag.is_empty() && tag != "latest" => {}
        _ => problems.push(format!(
            "`prometheus` runs `{image}`; expected prom/prometheus with a pinned tag"
        )),
    }

    // deploy/prometheus/ is its configuration directory, read-only, and the
    // configuration file it is told to read is one of that directory's.
    let mount = words(prometheus.get("volumes")).into_iter().find_map(|v| {
        let mut parts = v.split(':');
        let (source, target, mode) = (parts.next()?, parts.next()?, parts.next());
        (source.trim_end_matches('/') == "./deploy/prometheus")
            .then(|| (target.trim_end_matches('/').to_owned(), mode == Some("ro")))
    });
    match &mount {
        None => problems.push(
            "`prometheus` does not mount ./deploy/prometheus (its configuration directory)".into(),
        ),
        Some((_, false)) => {
            problems.push("`prometheus` mounts ./deploy/prometheus writable; mount it :ro".into());
        }
        Some(_) => {}
    }
    let config_flag = words(prometheus.get("command"))
        .into_iter()
        .find_map(|w| w.strip_prefix("--config.file=").map(str::to_owned));
    match (&mount, &config_flag) {
        (Some((dir, _)), Some(file)) => match file.strip_prefix(&format!("{dir}/")) {
            Some(name) if root().join("deploy/prometheus").join(name).is_file() => {}
            _ => problems.push(format!(
                "`prometheus` reads --config.file={file}, which is not a file of \
                 deploy/prometheus/ (mounted at {dir})"
            )),
        },
        (_, None) => problems.push("`prometheus` has no --config.file in its `command:`".into()),
        _ => {}
    }

    // Its configuration: the rule files exist, and the jobs the rules expect
    // scrape the ports the intake and the workers serve /metrics on.
    let config = yaml("deploy/prometheus/prometheus.yml");
    for rules in words(config.get("rule_files")) {
        if !root().join("deploy/prometheus").join(&rules).is_file() {
            problems.push(format!(
                "deploy/prometheus/prometheus.yml loads {rules}, which is not in deploy/prometheus/"
            ));
        }
    }
    let jobs: BTreeMap<String, &Value> = config
        .get("scrape_configs")
        .and_then(Value::as_sequence)
        .expect("deploy/prometheus/prometheus.yml has scrape_configs")
        .iter()
        .map(|job| (job.get("job_name").map(scalar).unwrap_or_default(), job))
        .collect();
    // (job, what it must reach: [host:port] as static targets, or a DNS name
    // with a port).
    let mut scraped: Vec<(String, String, u16)> = Vec::new();
    for (name, job) in &jobs {
        for group in job
            .get("static_configs")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            for target in words(group.get("targets")) {
                match target.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>())) {
                    Some((host, Ok(port))) => scraped.push((name.clone(), host.to_owned(), port)),
                    _ => problems.push(format!("job {name}: target {target} has no port")),
                }
            }
        }
        for sd in job
            .get("dns_sd_configs")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let port = sd.get("port").map(scalar).and_then(|p| p.parse().ok());
            for host in words(sd.get("names")) {
                match port {
                    Some(port) => scraped.push((name.clone(), host, port)),
                    None => problems.push(format!("job {name}: dns_sd name {host} has no port")),
                }
            }
        }
    }
    let roles = verimail_services(&compose, &mut problems);
    for (job, role, var) in [
        (
            "verimail-intake",
            "intake",
            "VERIMAIL_INTAKE_METRICS_LISTEN",
        ),
        ("verimail-worker", "worker", "VERIMAIL_METRICS_LISTEN"),
    ] {
        let Some(service) = roles.iter().find(|s| s.role() == role) else {
            continue;
        };
        let Some(port) = metrics_port(service, var) else {
            problems.push(format!(
                "service `{}`: {var} is not an address",
                service.name
            ));
            continue;
        };
        let targets: Vec<&(String, String, u16)> =
            scraped.iter().filter(|(j, _, _)| j == job).collect();
        if targets.is_empty() {
            problems.push(format!(
                "deploy/prometheus/prometheus.yml has no job {job} (the alert rules expect it)"
            ));
        }
        for (_, host, target_port) in targets {
            if host != &service.name || *target_port != port {
                problems.push(format!(
                    "job {job} scrapes {host}:{target_port}, but the `{role}` service is `{}` \
                     with /metrics on port {port} ({var})",
                    service.name
                ));
            }
        }
        if !exposes(&service.raw, port) {
            problems.push(format!(
                "service `{}` does not `expose` {port}, the metrics port Prometheus scrapes",
                service.name
            ));
        }
    }

    // Published on localhost, where the README and scripts/compose-e2e.sh
    // look for it.
    let published: Vec<String> = words(prometheus.get("ports"));
    let host_port = published
        .iter()
        .find_map(|p| p.strip_prefix("127.0.0.1:")?.strip_suffix(":9090"))
        .map(str::to_owned);
    match host_port {
        None => problems.push(format!(
            "`prometheus` does not publish its port 9090 on 127.0.0.1: {published:?}"
        )),
        Some(port) => {
            let url = format!("http://127.0.0.1:{port}");
            if shell_constant("scripts/compose-e2e.sh", "PROM_API").as_deref() != Some(url.as_str())
            {
                problems.push(format!(
                    "scripts/compose-e2e.sh does not read Prometheus at {url} (PROM_API)"
                ));
            }
            if !read("README.md").contains(&url) {
                problems.push(format!("README.md never shows Prometheus at {url}"));
            }
        }
    }

    // CI runs it too, from its stand-in image.
    let ci = yaml(".ci/compose/docker-compose.ci.yml");
    if ci
        .get("services")
        .and_then(|s| s.get("prometheus"))
        .and_then(|p| p.get("image"))
        .is_none()
    {
        problems.push(
            "the CI override gives `prometheus` no stand-in image; CI can pull none".to_owned(),
        );
    }
    assert_no_problems("Prometheus in docker-compose.yml", &problems);
}
