//! Validation agreement: the real kube-apiserver (the CRD's schema and CEL
//! rules) and `bulkhead_crds::validation` (the operator's checks in code)
//! must judge every Tenant alike. The invalid-Tenant table of `crds/tests`
//! must be refused by both, each naming the field; the examples and the
//! table's valid cases must be accepted by both; and so must agree a
//! generated set of Tenants near the edges of the rules. Every request is a
//! `dryRun=All` create, so nothing is stored.

use anyhow::{Context, Result, bail};
use bulkhead_crds::Tenant;
use bulkhead_crds::validation::{NamespaceNaming, validate_tenant};
use bulkhead_envtest::ControlPlane;
use bulkhead_envtest::binaries::repository_root;
use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::core::Status;
use kube::{Api, Client};
use serde_json::{Value, json};

#[path = "../../../crds/tests/tenant_cases/mod.rs"]
mod tenant_cases;

use tenant_cases::{NOT_POSITIVE_QUANTITIES, POSITIVE_QUANTITIES, Schema, cases, valid_cases};

/// What one side said about a Tenant.
#[derive(Debug)]
enum Verdict {
    Accepted,
    /// Refused: the fields named (empty when none is) and the whole message.
    Refused {
        fields: Vec<String>,
        message: String,
    },
}

impl Verdict {
    fn is_accepted(&self) -> bool {
        matches!(self, Verdict::Accepted)
    }

    fn message(&self) -> &str {
        match self {
            Verdict::Accepted => "accepted",
            Verdict::Refused { message, .. } => message,
        }
    }
}

/// The API server's side: a `dryRun=All` create of the Tenant.
struct Server {
    api: Api<DynamicObject>,
}

impl Server {
    async fn connect() -> Result<Self> {
        let cp = ControlPlane::shared();
        cp.apply_manifests()?;
        let client: Client = cp.admin_client().await?;
        let resource = ApiResource::erase::<Tenant>(&());
        Ok(Self {
            api: Api::all_with(client, &resource),
        })
    }

    async fn verdict(&self, tenant: &Value) -> Result<Verdict> {
        let object: DynamicObject =
            serde_json::from_value(tenant.clone()).context("not a Kubernetes object")?;
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        match self.api.create(&dry_run, &object).await {
            Ok(_) => Ok(Verdict::Accepted),
            Err(kube::Error::Api(status)) if is_invalid(&status) => Ok(Verdict::Refused {
                fields: status
                    .details
                    .iter()
                    .flat_map(|d| &d.causes)
                    .map(|c| c.field.clone())
                    .collect(),
                message: status.message.clone(),
            }),
            Err(error) => Err(error).context("the API server failed the request"),
        }
    }
}

/// True for the API server's answer to an object that fails validation
/// (422 Invalid); anything else is a failure of the test, not a verdict.
fn is_invalid(status: &Status) -> bool {
    status.code == 422
}

/// The operator's side: parse the Tenant, then `validate_tenant` with the
/// default namespace naming (the one the schema assumes).
fn code_verdict(tenant: &Value) -> Verdict {
    let tenant: Tenant = match serde_json::from_value(tenant.clone()) {
        Ok(tenant) => tenant,
        Err(error) => {
            return Verdict::Refused {
                fields: Vec::new(),
                message: format!("cannot parse: {error}"),
            };
        }
    };
    match validate_tenant(&tenant, &NamespaceNaming::default()) {
        Ok(()) => Verdict::Accepted,
        Err(invalid) => Verdict::Refused {
            fields: invalid.errors.iter().map(|e| e.field.clone()).collect(),
            message: invalid.to_string(),
        },
    }
}

/// True when `a` is `b` or a field above it: `spec.connectors` is above
/// `spec.connectors[1].name`, `spec.con` is not.
fn is_at_or_above(a: &str, b: &str) -> bool {
    b == a || (b.starts_with(a) && matches!(b.as_bytes().get(a.len()), Some(b'.' | b'[')))
}

/// True when the API server's refusal names `field`: one of its causes is
/// on the field, on a field above it whose message names the field, or
/// below it; or it has no field (rules on the root) and its message names
/// the field.
fn server_names(verdict: &Verdict, field: &str) -> bool {
    let Verdict::Refused { fields, message } = verdict else {
        return false;
    };
    // The last name in the path: `ports` of `spec.network.egress.ports[1]`.
    let leaf = field
        .rsplit('.')
        .next()
        .and_then(|last| last.split('[').next())
        .unwrap_or(field);
    fields.iter().any(|f| {
        f == field
            || is_at_or_above(field, f)
            || (is_at_or_above(f, field) && message.contains(leaf))
    }) || message.contains(field)
}

/// The repository's example Tenants, by file name.
fn examples() -> Result<Vec<(String, Value)>> {
    let dir = repository_root().join("manifests/examples");
    let mut examples = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path)?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            examples.push((name, yaml_serde::from_str(&text)?));
        }
    }
    examples.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(examples)
}

fn full_example() -> Result<Value> {
    examples()?
        .into_iter()
        .find(|(name, _)| name == "full.yaml")
        .map(|(_, tenant)| tenant)
        .context("manifests/examples/full.yaml is missing")
}

/// Both verdicts of one case, as the report of a disagreement prints them.
fn both(server: &Verdict, code: &Verdict) -> String {
    format!(
        "\n    API server: {}\n    code:       {}",
        server.message(),
        code.message()
    )
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn every_invalid_tenant_of_the_table_is_refused_by_both_naming_the_field() -> Result<()> {
    let server = Server::connect().await?;
    let full = full_example()?;
    // (what, Tenant, field at fault, text the API server's message must show)
    let mut invalid: Vec<(String, Value, &str, Option<&str>)> = Vec::new();
    for case in cases() {
        let mut tenant = full.clone();
        (case.edit)(&mut tenant);
        // What the API server's message must show: a CEL rule's message,
        // or for a map or set list the duplicate, under the list.
        let shows = match case.schema {
            Schema::Cel(text) | Schema::CelOnServerOnly(text) => Some(text),
            Schema::UniqueList(list) => {
                assert!(case.field.starts_with(list), "{}", case.name);
                Some("Duplicate value")
            }
            Schema::Keyword => None,
        };
        invalid.push((case.name.to_owned(), tenant, case.field, shows));
    }
    for (field, name) in [("spec.quota.cpu", "cpu"), ("spec.quota.memory", "memory")] {
        for quantity in NOT_POSITIVE_QUANTITIES {
            let mut tenant = full.clone();
            tenant["spec"]["quota"][name] = json!(quantity);
            invalid.push((
                format!("{field} {quantity:?}"),
                tenant,
                field,
                Some("positive quantity"),
            ));
        }
    }

    let mut disagreements = Vec::new();
    for (name, tenant, field, shows) in &invalid {
        let on_server = server.verdict(tenant).await?;
        let in_code = code_verdict(tenant);
        let code_names = matches!(&in_code, Verdict::Refused { fields, .. } if fields.iter().any(|f| f == field));
        let shown = shows.is_none_or(|text| on_server.message().contains(text));
        if !server_names(&on_server, field) || !code_names || !shown {
            disagreements.push(format!(
                "{name}: expected both to refuse naming {field}{}{}",
                shows
                    .map(|t| format!(", the API server with {t:?}"))
                    .unwrap_or_default(),
                both(&on_server, &in_code)
            ));
        }
    }
    println!("{} invalid Tenants sent", invalid.len());
    if !disagreements.is_empty() {
        bail!(
            "{} of {} invalid Tenants not refused by both naming the field:\n{}",
            disagreements.len(),
            invalid.len(),
            disagreements.join("\n")
        );
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn every_example_and_valid_case_is_accepted_by_both() -> Result<()> {
    let server = Server::connect().await?;
    let full = full_example()?;
    let mut valid = examples()?;
    assert!(valid.len() >= 2, "examples: {valid:?}");
    for case in valid_cases() {
        let mut tenant = full.clone();
        (case.edit)(&mut tenant);
        valid.push((case.name.to_owned(), tenant));
    }
    for quantity in POSITIVE_QUANTITIES {
        for field in ["cpu", "memory"] {
            let mut tenant = full.clone();
            tenant["spec"]["quota"][field] = json!(quantity);
            valid.push((format!("spec.quota.{field} {quantity:?}"), tenant));
        }
    }

    let mut disagreements = Vec::new();
    for (name, tenant) in &valid {
        let on_server = server.verdict(tenant).await?;
        let in_code = code_verdict(tenant);
        if !on_server.is_accepted() || !in_code.is_accepted() {
            disagreements.push(format!(
                "{name}: expected both to accept{}",
                both(&on_server, &in_code)
            ));
        }
    }
    println!("{} valid Tenants sent", valid.len());
    if !disagreements.is_empty() {
        bail!(
            "{} of {} valid Tenants not accepted by both:\n{}",
            disagreements.len(),
            valid.len(),
            disagreements.join("\n")
        );
    }
    Ok(())
}

/// How many generated Tenants one run sends: at about 5 ms a request the
/// whole set takes about 10 s on a busy 2-core machine.
const GENERATED_CASES: u32 = 2000;
/// The generator's seed, fixed so every run sends the same Tenants.
const SEED: [u8; 32] = *b"bulkhead validation agreement 01";
/// Where proptest saves the seed of a failing case, to replay it first on
/// every later run (relative to the crate directory, where cargo runs the
/// test); commit the file when it appears. The cases found so far are in
/// the table of `crds/tests/tenant_cases`.
const REGRESSIONS: &str = "tests/validation_agreement.proptest-regressions";

/// Whether two refusals agree: the API server names a field the code
/// names, and every field the code names unless the API server stopped
/// early (it skips the CEL rules of an object whose schema check failed).
/// A Tenant the code cannot parse has no field; any refusal by the API
/// server agrees with it.
fn refusals_agree(server: &Verdict, code: &Verdict) -> bool {
    let (Verdict::Refused { message, .. }, Verdict::Refused { fields, .. }) = (server, code) else {
        return false;
    };
    let stopped_early = message.contains("some validation rules were not checked");
    fields.is_empty()
        || (fields.iter().any(|f| server_names(server, f))
            && (stopped_early || fields.iter().all(|f| server_names(server, f))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the envtest control plane: tests/envtest/run.sh"]
async fn generated_tenants_near_the_edges_are_judged_alike() -> Result<()> {
    use std::sync::atomic::{AtomicU32, Ordering};

    use proptest::test_runner::{
        Config, FileFailurePersistence, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner,
    };

    let server = Server::connect().await?;
    let full = full_example()?;
    let handle = tokio::runtime::Handle::current();
    let config = Config {
        cases: GENERATED_CASES,
        max_shrink_iters: 256,
        rng_algorithm: RngAlgorithm::ChaCha,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        source_file: Some(file!()),
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &SEED));
    let (accepted, refused) = (AtomicU32::new(0), AtomicU32::new(0));
    let started = std::time::Instant::now();
    let result = tokio::task::block_in_place(|| {
        runner.run(&generated::edits(), |edits| {
            let mut tenant = full.clone();
            for edit in &edits {
                generated::apply(&mut tenant, edit);
            }
            let on_server = handle
                .block_on(server.verdict(&tenant))
                .map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
            let in_code = code_verdict(&tenant);
            match (&on_server, &in_code) {
                (Verdict::Accepted, Verdict::Accepted) => {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
                _ if refusals_agree(&on_server, &in_code) => {
                    refused.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
                _ => Err(TestCaseError::fail(format!(
                    "the API server and the code disagree{}",
                    both(&on_server, &in_code)
                ))),
            }
        })
    });
    let (accepted, refused) = (accepted.into_inner(), refused.into_inner());
    println!(
        "{} generated Tenants in {:.1} s: {accepted} accepted and {refused} refused by both",
        accepted + refused,
        started.elapsed().as_secs_f64()
    );
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, edits)) => bail!(
            "{reason}
    edits: {edits:?}"
        ),
        Err(TestError::Abort(reason)) => bail!("generation aborted: {reason}"),
    }
    // A generator that drifted to one side would prove little.
    assert!(
        accepted >= GENERATED_CASES / 10 && refused >= GENERATED_CASES / 10,
        "{accepted} accepted, {refused} refused"
    );
    Ok(())
}

/// Generated Tenants: the full example with one or two fields set to values
/// near the edges of the rules. Each field edit is a JSON pointer and the
/// value put there, so a failing case prints (and shrinks to) exactly what
/// was changed.
mod generated {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;
    use proptest::sample::select;
    use serde_json::{Value, json};

    /// Edits of fields of the full example: (JSON pointer, value).
    pub type Edit = Vec<(&'static str, Value)>;

    /// Sets each pointer of `edit` in `tenant`; the parent of every pointer
    /// exists in the full example.
    pub fn apply(tenant: &mut Value, edit: &Edit) {
        for (pointer, value) in edit {
            let (parent, key) = pointer.rsplit_once('/').unwrap_or(("", pointer));
            match tenant.pointer_mut(parent) {
                Some(Value::Object(object)) => {
                    object.insert(key.to_owned(), value.clone());
                }
                Some(Value::Array(items)) => match key.parse::<usize>() {
                    Ok(i) if i < items.len() => items[i] = value.clone(),
                    _ => items.push(value.clone()),
                },
                _ => panic!("the full example has no {parent}"),
            }
        }
    }

    fn set(pointer: &'static str, value: Value) -> Edit {
        vec![(pointer, value)]
    }

    /// Tenant ids around the 54-character limit and the 63-character DNS
    /// label, with and without the label's character rules.
    fn tenant_id() -> impl Strategy<Value = Edit> {
        prop_oneof![
            "[a-z0-9][-a-z0-9]{51,54}[a-z0-9]",
            "[a-z][a-z0-9]{60,63}",
            "[-a-z0-9.A-Z_]{1,4}",
            Just("system".to_owned()),
            Just("system1".to_owned()),
            Just("kube-system".to_owned()),
            Just("default".to_owned()),
        ]
        .prop_map(|id| set("/metadata/name", json!(id)))
    }

    /// An IPv4 address in one of its textual forms.
    fn ipv4_text(addr: Ipv4Addr, form: u8) -> String {
        let o = addr.octets();
        match form {
            // A leading zero on the first octet (an octal look-alike).
            0 => format!("0{}.{}.{}.{}", o[0], o[1], o[2], o[3]),
            _ => addr.to_string(),
        }
    }

    /// An IPv6 address in one of its textual forms.
    fn ipv6_text(addr: Ipv6Addr, form: u8) -> String {
        let s = addr.segments();
        let o = addr.octets();
        match form {
            // RFC 5952, as Rust prints it.
            0 => addr.to_string(),
            1 => addr.to_string().to_uppercase(),
            // Every group, four digits each.
            2 => s
                .iter()
                .map(|g| format!("{g:04x}"))
                .collect::<Vec<_>>()
                .join(":"),
            // Six groups and a dotted IPv4 tail.
            3 => format!(
                "{}:{}.{}.{}.{}",
                s[..6]
                    .iter()
                    .map(|g| format!("{g:x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
                o[12],
                o[13],
                o[14],
                o[15]
            ),
            // With a zone.
            _ => format!("{addr}%eth0"),
        }
    }

    fn masked(bits: u128, width: u32, prefix: u32) -> u128 {
        if prefix == 0 {
            0
        } else if prefix >= width {
            bits
        } else {
            bits & (u128::MAX << (width - prefix))
        }
    }

    /// CIDRs of both families around the prefix bounds, canonical or with
    /// host bits, in canonical and non-canonical spellings, IPv4-mapped
    /// (`::ffff:a.b.c.d/n`) and IPv4-compatible among them.
    fn cidr() -> impl Strategy<Value = String> {
        let v4 = (
            select(vec![
                0u32,
                0x0a00_0000,
                0x7f00_0001,
                0xa9fe_0000,
                0xc0a8_0101,
                0xcb00_7107,
                u32::MAX,
            ]),
            select(vec![0u32, 1, 8, 16, 24, 31, 32, 33]),
            any::<bool>(),
            select(vec![1u8, 1, 1, 0]),
            select(vec!["", "", "", "0", "+", " "]),
        )
            .prop_map(|(addr, prefix, mask, form, prefix_mark)| {
                let bits = if mask {
                    masked(u128::from(addr), 32, prefix) as u32
                } else {
                    addr
                };
                format!(
                    "{}/{prefix_mark}{prefix}",
                    ipv4_text(Ipv4Addr::from(bits), form)
                )
            });
        let v6 = (
            select(vec![
                0u128,
                1,
                0x2001_0db8_u128 << 96,
                (0x2001_0db8_u128 << 96) | 0x1234,
                0xfe80_u128 << 112,
                0xfc00_u128 << 112,
                0xffff_u128 << 32,
                (0xffff_u128 << 32) | 0x0a00_0000,
                (0xffff_u128 << 32) | 0xcb00_7100,
                0xcb00_7100,
                0x0064_ff9b_u128 << 96,
                u128::MAX,
            ]),
            select(vec![0u32, 1, 7, 32, 64, 96, 104, 120, 127, 128, 129]),
            any::<bool>(),
            select(vec![0u8, 0, 1, 2, 3, 4]),
            select(vec!["", "", "", "", "0"]),
        )
            .prop_map(|(addr, prefix, mask, form, prefix_mark)| {
                let bits = if mask {
                    masked(addr, 128, prefix)
                } else {
                    addr
                };
                format!(
                    "{}/{prefix_mark}{prefix}",
                    ipv6_text(Ipv6Addr::from(bits), form)
                )
            });
        prop_oneof![
            v4,
            v6,
            select(vec![
                "10.0.0.0",
                "10.0.0.0/",
                "/8",
                "example.com/8",
                "10.0.0/8",
                "1111:2222:3333:4444:5555:6666:123.123.123.123/128",
                "::ffff:0.0.0.0/96",
                "0:0:0:0:0:0:0:0/0",
            ])
            .prop_map(str::to_owned),
        ]
    }

    fn cidrs() -> impl Strategy<Value = Edit> {
        prop::collection::vec(cidr(), 1..=2)
            .prop_map(|c| set("/spec/network/egress/cidrs", json!(c)))
    }

    /// Quantities as strings near zero, with every suffix and sign, and as
    /// JSON numbers.
    fn quantity() -> impl Strategy<Value = Value> {
        prop_oneof![
            3 => (
                select(vec![
                    "0", "1", "00", "0.5", ".5", "5.", "1.0", "+1", "-1", "-0", "0.000000001",
                    "0.0000000001", "9223372036854775807", "1e3", "1E3", "1e-9", "1e-10", "",
                ]),
                select(vec![
                    "", "m", "n", "u", "k", "K", "M", "G", "Ki", "Mi", "Gi", "Ei", "E", "e3", "e-3",
                    "i", " ", "Xi",
                ]),
            )
                .prop_map(|(number, suffix)| json!(format!("{number}{suffix}"))),
            1 => select(vec![json!(0), json!(1), json!(-1), json!(3), json!(2_147_483_648_i64), json!(0.5)]),
        ]
    }

    fn quota() -> impl Strategy<Value = Edit> {
        prop_oneof![
            quantity().prop_map(|q| set("/spec/quota/cpu", q)),
            quantity().prop_map(|q| set("/spec/quota/memory", q)),
            (
                select(vec![
                    "/spec/quota/pods",
                    "/spec/quota/services",
                    "/spec/quota/configMaps",
                    "/spec/quota/secrets",
                    "/spec/quota/persistentVolumeClaims",
                ]),
                select(vec![-1i64, 0, 1, 2_147_483_647, 2_147_483_648]),
            )
                .prop_map(|(field, n)| set(field, json!(n))),
        ]
    }

    /// Allow-list paths: segments around the wildcard and dot rules, other
    /// whitespace and control characters, lengths around 512 characters.
    fn path() -> impl Strategy<Value = Edit> {
        let segments = prop::collection::vec(
            select(vec![
                "v1",
                "*",
                "**",
                "a.b",
                ".",
                "..",
                "...",
                "x*",
                "*x",
                "",
                "é",
                "a b",
                "a\u{a0}b",
                "a\u{85}b",
                "a\u{1}b",
                "a\u{7f}b",
                "%2e%2e",
                "%7Ea",
                "a\\b",
                "a?b",
                "a#b",
                "a\tb",
                "a\u{2028}b",
            ]),
            1..=3,
        );
        prop_oneof![
            3 => (segments, prop::bool::weighted(0.9)).prop_map(|(s, absolute)| {
                format!("{}{}", if absolute { "/" } else { "" }, s.join("/"))
            }),
            1 => (select(vec!["a", "é"]), select(vec![255usize, 256, 510, 511, 512]))
                .prop_map(|(c, n)| format!("/{}", c.repeat(n))),
        ]
        .prop_map(|p| set("/spec/connectors/1/allow/0/path", json!(p)))
    }

    fn ports() -> impl Strategy<Value = Edit> {
        prop::collection::vec(
            select(vec![-1i64, 0, 1, 443, 65535, 65536, 2_147_483_648]),
            1..=2,
        )
        .prop_map(|p| set("/spec/network/egress/ports", json!(p)))
    }

    fn replicas() -> impl Strategy<Value = Edit> {
        select(vec![-1i64, 0, 1, 50, 51, 2_147_483_647, 2_147_483_648])
            .prop_map(|r| set("/spec/server/replicas", json!(r)))
    }

    /// RuntimeClass names: DNS labels of 62 to 64 characters, joined up to
    /// and past 253 characters, and characters no label takes.
    fn runtime_class() -> impl Strategy<Value = Edit> {
        prop_oneof![
            prop::collection::vec(select(vec![1usize, 62, 63, 64]), 1..=4).prop_map(|lengths| {
                lengths
                    .iter()
                    .map(|n| "r".repeat(*n))
                    .collect::<Vec<_>>()
                    .join(".")
            }),
            "[a-zA-Z0-9._-]{0,4}",
        ]
        .prop_map(|c| set("/spec/server/runtimeClassName", json!(c)))
    }

    /// Credential and connector names around 63 characters and the
    /// character rules; the credential is renamed where it is used too.
    fn ref_names() -> impl Strategy<Value = Edit> {
        let name = prop_oneof![
            "[a-z][-_a-z0-9]{60,63}[a-z0-9]",
            "[-_a-zA-Z0-9]{1,3}",
            Just("é".to_owned())
        ];
        prop_oneof![
            name.clone().prop_map(|n| vec![
                ("/spec/credentials/0/name", json!(n)),
                ("/spec/connectors/0/credential", json!(n)),
            ]),
            name.prop_map(|n| set("/spec/connectors/0/name", json!(n))),
        ]
    }

    fn strings() -> impl Strategy<Value = Edit> {
        prop_oneof![
            prop_oneof!["[-._a-zA-Z0-9]{252,254}", "[-._a-zA-Z0-9 /é]{0,3}"]
                .prop_map(|k| set("/spec/credentials/0/key", json!(k))),
            (
                select(vec![
                    "https://", "http://", "HTTPS://", "ftp://", "https:/", ""
                ]),
                select(vec![
                    "api.example.com",
                    "",
                    "user@api.example.com",
                    "api.example.com:8443",
                    "[::1]:8443",
                    "api\u{a0}example.com",
                    "api\u{1}example.com",
                ]),
                select(vec![
                    "",
                    "/",
                    "/v1",
                    "/a b",
                    "/a?b",
                    "/a#b",
                    "/a@b",
                    "/a\u{85}b",
                    "/é"
                ]),
            )
                .prop_map(|(scheme, host, path)| set(
                    "/spec/connectors/0/baseUrl",
                    json!(format!("{scheme}{host}{path}"))
                )),
            prop_oneof![
                select(vec![
                    "",
                    "a",
                    "a b",
                    "a\u{a0}b",
                    "a\u{1}b",
                    "ghcr.io/x/y:1@sha256:00"
                ])
                .prop_map(str::to_owned),
                (
                    select(vec!["x", "é"]),
                    select(vec![300usize, 511, 512, 513])
                )
                    .prop_map(|(c, n)| c.repeat(n)),
            ]
            .prop_map(|i| set("/spec/server/image", json!(i))),
            prop_oneof![
                select(vec![
                    "",
                    "Acme\u{7f}",
                    "Acme\u{85}",
                    "Acme\u{9f}",
                    "Acme\u{a0}",
                    "Acme\u{2028}",
                    "Ünïcødé"
                ])
                .prop_map(str::to_owned),
                (select(vec!["x", "é"]), select(vec![255usize, 256, 257]))
                    .prop_map(|(c, n)| c.repeat(n)),
            ]
            .prop_map(|d| set("/spec/displayName", json!(d))),
            (
                select(vec!["t", "é"]),
                select(vec![0usize, 1, 127, 128, 129])
            )
                .prop_map(|(c, n)| set("/spec/rateLimits/perTool/0/tool", json!(c.repeat(n)))),
        ]
    }

    fn rate_limits() -> impl Strategy<Value = Edit> {
        prop_oneof![
            select(vec![-1i64, 0, 1, 1_000_000, 1_000_001, 4_294_967_296])
                .prop_map(|n| set("/spec/rateLimits/perCaller/requestsPerMinute", json!(n))),
            select(vec![-1i64, 0, 1, 100_000, 100_001])
                .prop_map(|n| set("/spec/rateLimits/perTool/0/burst", json!(n))),
        ]
    }

    /// Namespace selectors: each operator with no, empty and some values,
    /// alone or beside an `In` expression.
    fn selector() -> impl Strategy<Value = Edit> {
        (
            select(vec![
                "In",
                "NotIn",
                "Exists",
                "DoesNotExist",
                "in",
                "Matches",
            ]),
            select(vec![None, Some(json!([])), Some(json!(["a"]))]),
            any::<bool>(),
        )
            .prop_map(|(operator, values, beside_in)| {
                let mut expression = json!({"key": "team", "operator": operator});
                if let Some(values) = values {
                    expression["values"] = values;
                }
                let mut expressions = vec![expression];
                if beside_in {
                    expressions.push(json!({"key": "tier", "operator": "In", "values": ["x"]}));
                }
                set(
                    "/spec/network/ingressFrom/1",
                    json!({"matchExpressions": expressions}),
                )
            })
    }

    fn enums() -> impl Strategy<Value = Edit> {
        prop_oneof![
            select(vec!["GET", "get", "TRACE", "", "DELETE"])
                .prop_map(|m| set("/spec/connectors/1/allow/0/method", json!(m))),
            select(vec!["Delete", "Retain", "delete", "Orphan", ""])
                .prop_map(|p| set("/spec/deletionPolicy", json!(p))),
            select(vec!["github", "http", "GitHub", "grpc"])
                .prop_map(|t| set("/spec/connectors/0/type", json!(t))),
        ]
    }

    /// An `oauth` object that passes both halves, to be edited.
    fn oauth() -> Value {
        json!({
            "issuer": "https://login.example.com/realms/globex",
            "resource": "https://mcp.example.com/globex/mcp",
            "issuerNetwork": {"cidrs": ["203.0.113.10/32"]},
        })
    }

    /// `spec.auth` with API keys on and `oauth`.
    fn auth_with(oauth: Value) -> Edit {
        set("/spec/auth", json!({"apiKeys": true, "oauth": oauth}))
    }

    /// Issuer and resource URLs from schemes, hosts and endings near the
    /// rules' edges (https; http only on a loopback host; no user
    /// information or fragment; the issuer no query).
    fn oauth_urls() -> impl Strategy<Value = Edit> {
        (
            select(vec!["https://", "http://", "HTTPS://", "https:/", ""]),
            select(vec![
                "login.example.com",
                "login.example.com:8443",
                "localhost",
                "localhost:8080",
                "LOCALHOST",
                "localhost.example.com",
                "127.0.0.1:9000",
                "127.0.0.1.example.com",
                "[::1]:8443",
                "[::2]",
                "u@login.example.com",
                "login\u{a0}example.com",
                "",
            ]),
            select(vec![
                "",
                "/",
                "/realms/a",
                "/?q=1",
                "/#f",
                "/a b",
                "/é",
                "?x",
                "/a\u{85}",
            ]),
            any::<bool>(),
        )
            .prop_map(|(scheme, host, ending, issuer)| {
                let url = format!("{scheme}{host}{ending}");
                let mut oauth = oauth();
                oauth[if issuer { "issuer" } else { "resource" }] = json!(url);
                auth_with(oauth)
            })
    }

    /// Scopes, claim names, clock skews and algorithms near their edges.
    fn oauth_values() -> impl Strategy<Value = Edit> {
        prop_oneof![
            select(vec![
                json!(["mcp:tools"]),
                json!(["a b"]),
                json!(["a\"b"]),
                json!(["a\\b"]),
                json!([""]),
                json!(["é"]),
                json!(["a!#[]~"]),
                json!(["s".repeat(256)]),
                json!(["s".repeat(257)]),
                json!(["x", "x"]),
            ])
            .prop_map(|scopes| {
                let mut oauth = oauth();
                oauth["requiredScopes"] = scopes;
                auth_with(oauth)
            }),
            (
                select(vec!["callerClaim", "groupsClaim", "tenantClaim"]),
                prop_oneof![
                    select(vec![
                        "",
                        "sub",
                        "a\u{7}b",
                        "a\u{85}b",
                        "é",
                        "https://x/y",
                        "a b"
                    ])
                    .prop_map(str::to_owned),
                    (select(vec!["c", "é"]), select(vec![127usize, 128, 129]))
                        .prop_map(|(c, n)| c.repeat(n)),
                ],
            )
                .prop_map(|(name, claim)| {
                    let mut oauth = oauth();
                    oauth[name] = json!(claim);
                    auth_with(oauth)
                }),
            select(vec![-1i64, 0, 300, 301]).prop_map(|skew| {
                let mut oauth = oauth();
                oauth["clockSkewSeconds"] = json!(skew);
                auth_with(oauth)
            }),
            select(vec![
                json!(["RS256", "EdDSA"]),
                json!(["HS256"]),
                json!(["none"]),
                json!(["ES256", "ES256"]),
            ])
            .prop_map(|algorithms| {
                let mut oauth = oauth();
                oauth["algorithms"] = algorithms;
                auth_with(oauth)
            }),
        ]
    }

    /// Where the issuer is: CIDRs, selectors, both or neither, ports.
    fn issuer_network() -> impl Strategy<Value = Edit> {
        let namespaces = json!({"matchLabels": {"kubernetes.io/metadata.name": "idp"}});
        (
            select(vec![
                None,
                Some(json!([])),
                Some(json!(["203.0.113.10/32"])),
                Some(json!(["203.0.113.10/24"])),
                Some(json!(["10.0.0.0/8", "10.0.0.0/8"])),
            ]),
            select(vec![
                None,
                Some(namespaces),
                Some(json!({})),
                Some(json!({"matchExpressions": [{"key": "idp", "operator": "Exists"}]})),
            ]),
            select(vec![
                None,
                Some(json!({})),
                Some(json!({"matchLabels": {"app": "idp"}})),
                Some(json!({"matchExpressions": [{"key": "app", "operator": "In"}]})),
            ]),
            select(vec![
                None,
                Some(json!([443, 8080])),
                Some(json!([0])),
                Some(json!([443, 443])),
            ]),
        )
            .prop_map(|(cidrs, namespaces, pods, ports)| {
                let mut network = json!({});
                for (name, value) in [
                    ("cidrs", cidrs),
                    ("namespaceSelector", namespaces),
                    ("podSelector", pods),
                    ("ports", ports),
                ] {
                    if let Some(value) = value {
                        network[name] = value;
                    }
                }
                let mut oauth = oauth();
                oauth["issuerNetwork"] = network;
                auth_with(oauth)
            })
    }

    /// Access rules, with API keys on or off and OAuth set or not.
    fn access() -> impl Strategy<Value = Edit> {
        (
            any::<bool>(),
            any::<bool>(),
            prop::collection::vec(
                select(vec![
                    json!({"apiKeyCaller": "ci-release"}),
                    json!({"apiKeyCaller": "ci/release"}),
                    json!({"apiKeyCaller": "k".repeat(254)}),
                    json!({"tokenSubject": "alice"}),
                    json!({"tokenSubject": "a\u{9f}"}),
                    json!({"group": "Ops Team é"}),
                    json!({"group": ""}),
                    json!({"scope": "github.read"}),
                    json!({"scope": "a b"}),
                    json!({}),
                    json!({"group": "ops", "scope": "x"}),
                ]),
                1..=2,
            ),
            select(vec![
                "*",
                "github_*",
                "a.b-c",
                "github get",
                "github/*",
                "é",
                "",
            ]),
        )
            .prop_map(|(api_keys, with_oauth, subjects, tool)| {
                let mut auth = json!({"apiKeys": api_keys});
                if with_oauth {
                    auth["oauth"] = oauth();
                }
                vec![
                    ("/spec/auth", auth),
                    (
                        "/spec/access",
                        json!([{"subjects": subjects, "tools": ["github_get_*", tool]}]),
                    ),
                ]
            })
    }

    /// One field edit near an edge.
    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            2 => tenant_id(),
            4 => cidrs(),
            3 => quota(),
            3 => path(),
            1 => ports(),
            1 => replicas(),
            1 => runtime_class(),
            1 => ref_names(),
            3 => strings(),
            1 => rate_limits(),
            2 => selector(),
            1 => enums(),
            2 => oauth_urls(),
            2 => oauth_values(),
            2 => issuer_network(),
            2 => access(),
        ]
    }

    /// A Tenant's edits: one or two fields changed.
    pub fn edits() -> impl Strategy<Value = Vec<Edit>> {
        prop::collection::vec(edit(), 1..=2)
    }
}
