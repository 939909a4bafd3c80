//! Tests of the configuration: defaults, file, environment and flags in order, bad inputs, the example file.

use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

const FILE: &str = r#"
    data_dir = "/from/file"
    listen = "0.0.0.0:9000"
    log = "debug"
    [tls]
    cert = "/file/cert.pem"
    key = "/file/key.pem"
    [http]
    max_body_bytes = 1000
"#;

#[test]
fn defaults_without_anything() {
    let c = Config::merge(Overrides::default(), FileConfig::default()).unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.listen.to_string(), "127.0.0.1:8443");
    assert_eq!(c.data_dir, PathBuf::from("./relaydesk-data"));
    assert_eq!(c.http.max_body_bytes, 65536);
}

#[test]
fn file_over_defaults() {
    let file = FileConfig::parse(FILE, Path::new("t.toml")).unwrap();
    let c = Config::merge(Overrides::default(), file).unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/from/file"));
    assert_eq!(c.listen.to_string(), "0.0.0.0:9000");
    assert_eq!(c.tls_cert, Some(PathBuf::from("/file/cert.pem")));
    assert_eq!(c.http.max_body_bytes, 1000);
    // Unset fields of a section keep their defaults.
    assert_eq!(c.http.shutdown_grace_secs, HttpConfig::default().shutdown_grace_secs);
    assert_eq!(c.sessions, SessionConfig::default());
}

#[test]
fn env_over_file_and_flags_over_env() {
    let file = FileConfig::parse(FILE, Path::new("t.toml")).unwrap();
    let e = env(&[
        ("RELAYDESK_DATA_DIR", "/from/env"),
        ("RELAYDESK_LISTEN", "127.0.0.1:7000"),
        ("RELAYDESK_LOG", ""),
    ]);
    let env_layer = Overrides::from_env(env_from_map(&e)).unwrap();
    let c = Config::merge(env_layer.clone(), file.clone()).unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/from/env"));
    assert_eq!(c.listen.to_string(), "127.0.0.1:7000");
    assert_eq!(c.log, "debug", "empty env value is unset; the file wins");

    let flags = Overrides {
        data_dir: Some("/from/flag".into()),
        ..Default::default()
    };
    let c = Config::merge(flags.over(env_layer), file).unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/from/flag"));
    assert_eq!(
        c.listen.to_string(),
        "127.0.0.1:7000",
        "env still wins over file where no flag"
    );
}

#[test]
fn bad_inputs_are_errors() {
    let unknown = FileConfig::parse("listen_addr = \"1.2.3.4:5\"", Path::new("t.toml"));
    assert!(matches!(unknown, Err(ConfigError::Parse { .. })), "{unknown:?}");
    let unknown_nested = FileConfig::parse("[http]\nmax_body = 5", Path::new("t.toml"));
    assert!(matches!(unknown_nested, Err(ConfigError::Parse { .. })));
    let wrong_type = FileConfig::parse("listen = 5", Path::new("t.toml"));
    assert!(matches!(wrong_type, Err(ConfigError::Parse { .. })));
    let e = env(&[("RELAYDESK_LISTEN", "nonsense")]);
    assert!(matches!(
        Overrides::from_env(env_from_map(&e)),
        Err(ConfigError::Env { .. })
    ));
    let half_tls = Overrides {
        tls_cert: Some("/c".into()),
        ..Default::default()
    };
    assert!(matches!(
        Config::merge(half_tls, FileConfig::default()),
        Err(ConfigError::Invalid(_))
    ));
    let origin = Overrides {
        public_origin: Some("https://desk.example/path".into()),
        ..Default::default()
    };
    assert!(matches!(
        Config::merge(origin, FileConfig::default()),
        Err(ConfigError::Invalid(_))
    ));
}

fn acme(text: &str) -> Result<Config, ConfigError> {
    let file = FileConfig::parse(text, Path::new("t.toml"))?;
    Config::merge(Overrides::default(), file)
}

#[test]
fn acme_settings() {
    let c =
        acme("[tls]\nacme_domains = [\"Desk.Example.com.\", \"chat.example.com\"]\nacme_contact = \"ops@example.com\"")
            .unwrap();
    let a = c.acme.unwrap();
    assert_eq!(a.domains, ["desk.example.com", "chat.example.com"]);
    assert_eq!(a.contact.as_deref(), Some("ops@example.com"));
    assert_eq!(a.directory, LETS_ENCRYPT_DIRECTORY);
    assert_eq!(a.directory_ca, None);
    let c = acme("[tls]\nacme_domains = [\"a.example\"]\nacme_directory = \"https://127.0.0.1:14000/dir\"\nacme_directory_ca = \"/ca.pem\"").unwrap();
    let a = c.acme.unwrap();
    assert_eq!(a.directory, "https://127.0.0.1:14000/dir");
    assert_eq!(a.contact, None);
    assert_eq!(acme("").unwrap().acme, None);

    let bad = [
        ("acme_domains = []", "is empty"),
        ("acme_contact = \"ops@example.com\"", "need tls.acme_domains"),
        (
            "acme_domains = [\"a.example\"]\ncert = \"/c\"\nkey = \"/k\"",
            "exclude each other",
        ),
        ("acme_domains = [\"a.example\"]\nacme_contact = \"ops\"", "no '@'"),
        (
            "acme_domains = [\"a.example\"]\nacme_contact = \"@example.com\"",
            "empty",
        ),
        (
            "acme_domains = [\"a.example\"]\nacme_contact = \"o ps@example.com\"",
            "not allowed",
        ),
        (
            "acme_domains = [\"a.example\"]\nacme_contact = \"ops@localhost\"",
            "not a valid host",
        ),
        ("acme_domains = [\"*.example.com\"]", "wildcard"),
        ("acme_domains = [\"192.0.2.1\"]", "IP address"),
        ("acme_domains = [\"localhost\"]", "single label"),
        ("acme_domains = [\"a_b.example\"]", "only letters"),
        ("acme_domains = [\"-a.example\"]", "'-'"),
        ("acme_domains = [\"a..example\"]", "1 to 63"),
        ("acme_domains = [\"a.example\", \"A.example\"]", "twice"),
        (
            "acme_domains = [\"a.example\"]\nacme_directory = \"http://ca.example/dir\"",
            "https://",
        ),
        (
            "acme_domains = [\"a.example\"]\nacme_directory = \"https:///dir\"",
            "no host",
        ),
    ];
    for (text, want) in bad {
        match acme(&format!("[tls]\n{text}")) {
            Err(ConfigError::Invalid(m)) => assert!(m.contains(want), "{text}: {m}"),
            other => panic!("{text}: expected an error containing {want:?}, got {other:?}"),
        }
    }
    let many: Vec<String> = (0..=ACME_MAX_DOMAINS).map(|i| format!("\"n{i}.example\"")).collect();
    assert!(acme(&format!("[tls]\nacme_domains = [{}]", many.join(","))).is_err());
    // A flag-given certificate excludes ACME from the file too.
    let file = FileConfig::parse("[tls]\nacme_domains = [\"a.example\"]", Path::new("t.toml")).unwrap();
    let flags = Overrides {
        tls_cert: Some("/c".into()),
        tls_key: Some("/k".into()),
        ..Default::default()
    };
    assert!(matches!(Config::merge(flags, file), Err(ConfigError::Invalid(_))));
}

#[test]
fn example_file_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/relaydesk.example.toml");
    let file = FileConfig::load(&path).unwrap();
    let c = Config::merge(Overrides::default(), file).unwrap();
    // The example documents the defaults.
    assert_eq!(c.http, HttpConfig::default());
    assert_eq!(c.sessions, SessionConfig::default());
    assert_eq!(c.login_throttle, ThrottleConfig::default());
    assert_eq!(c.live.files, crate::live_config::FilesConfig::default());
    assert_eq!(c.media, MediaConfig::default());
    assert_eq!(c.turn, crate::turn::TurnConfig::default());
    assert_eq!(c.listen, DEFAULT_LISTEN);
}
