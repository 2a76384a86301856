//! ACL behaviour through the public API, table-driven.

#![allow(clippy::unwrap_used)]

use promptmq_auth::{Acl, AclError, AclLineProblem, AclWarning, ClientAcl, ClientIdentity, FilterError};

#[derive(Clone, Copy, Debug)]
enum Op {
    Publish,
    Read,
    Subscribe,
    FullyReadable,
}
use Op::*;

fn check(acl: &Acl, who: ClientIdentity<'_>, op: Op, topic: &str) -> bool {
    // Exercise both the cached per-client value and the convenience methods.
    let client = acl.for_client(&who);
    let (cached, direct) = match op {
        Publish => (client.can_publish(topic), acl.can_publish(&who, topic)),
        Read => (client.can_read(topic), acl.can_read(&who, topic)),
        Subscribe => (client.can_subscribe(topic), acl.can_subscribe(&who, topic)),
        FullyReadable => (client.subscription_fully_readable(topic), acl.subscription_fully_readable(&who, topic)),
    };
    assert_eq!(cached, direct, "cached and direct disagree for {who:?} {op:?} {topic}");
    cached
}

fn run_table(acl: &Acl, table: &[(ClientIdentity<'_>, Op, &str, bool)]) {
    let mut failures = Vec::new();
    for &(who, op, topic, expected) in table {
        let got = check(acl, who, op, topic);
        if got != expected {
            failures.push(format!("{who:?} {op:?} {topic:?}: expected {expected}, got {got}"));
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

const ANON: ClientIdentity<'static> = ClientIdentity { client_id: "anon-1", username: None };
const ALICE: ClientIdentity<'static> = ClientIdentity { client_id: "alice-phone", username: Some("alice") };
const BOB: ClientIdentity<'static> = ClientIdentity { client_id: "bob-1", username: Some("bob") };
const CAROL: ClientIdentity<'static> = ClientIdentity { client_id: "carol-1", username: Some("carol") };

const MAIN_ACL: &str = "\
# Anonymous clients
topic read public/#
topic write public/anon-inbox

user alice
topic alice/#
topic read public/#
topic deny alice/secret

user bob
topic read bob/#

# Patterns apply to everyone, wherever they appear.
pattern readwrite devices/%c/#
pattern read users/%u/#
pattern deny devices/%c/locked
";

#[test]
fn anonymous_user_blocks_and_patterns() {
    let acl = Acl::parse(MAIN_ACL).unwrap();
    assert!(acl.warnings().is_empty());
    run_table(
        &acl,
        &[
            // Top-of-file topic lines apply to clients without a username...
            (ANON, Read, "public/news", true),
            (ANON, Publish, "public/news", false),
            (ANON, Publish, "public/anon-inbox", true),
            (ANON, Read, "public/anon-inbox", true),
            (ANON, Read, "alice/x", false),
            // ...and not to clients with one, even one without its own block.
            (ALICE, Publish, "public/anon-inbox", false),
            (CAROL, Read, "public/news", false),
            // User blocks: access omitted means readwrite.
            (ALICE, Read, "alice/notes", true),
            (ALICE, Publish, "alice/notes", true),
            (ALICE, Publish, "alice", true),
            (ALICE, Read, "public/news", true),
            (ALICE, Publish, "public/news", false),
            (ALICE, Read, "bob/x", false),
            (BOB, Read, "bob/x", true),
            (BOB, Publish, "bob/x", false),
            (BOB, Read, "alice/notes", false),
            // Deny beats the broader grant.
            (ALICE, Read, "alice/secret", false),
            (ALICE, Publish, "alice/secret", false),
            (ALICE, Read, "alice/secret/sub", true),
            // %c patterns, for everyone including anonymous clients.
            (ANON, Publish, "devices/anon-1/state", true),
            (ANON, Read, "devices/anon-1", true),
            (ANON, Publish, "devices/other/state", false),
            (ALICE, Publish, "devices/alice-phone/state", true),
            (CAROL, Read, "devices/carol-1/x", true),
            // Pattern deny beats pattern grant.
            (ANON, Publish, "devices/anon-1/locked", false),
            (ALICE, Read, "devices/alice-phone/locked", false),
            // %u patterns need a username.
            (ANON, Read, "users/anon-1/x", false),
            (CAROL, Read, "users/carol/inbox", true),
            (CAROL, Publish, "users/carol/inbox", false),
            (CAROL, Read, "users/alice/inbox", false),
            (ALICE, Read, "users/alice", true),
            // Invalid topic names are refused.
            (ALICE, Publish, "alice/+", false),
            (ALICE, Read, "", false),
        ],
    );
}

#[test]
fn unusable_substitution_values_fail_closed() {
    let acl = Acl::parse(MAIN_ACL).unwrap();
    let slash_id = ClientIdentity::new("alice-phone/extra", Some("alice"));
    let plus_id = ClientIdentity::new("+", None);
    let dollar_id = ClientIdentity::new("$SYS", None);
    let hash_user = ClientIdentity::new("ok-id", Some("#"));
    let slash_user = ClientIdentity::new("ok-id", Some("carol/inbox"));
    let empty_user = ClientIdentity::new("ok-id", Some(""));
    run_table(
        &acl,
        &[
            // The deny pattern uses %c and cannot be evaluated for these ids: everything is denied,
            // even the user's own block.
            (slash_id, Read, "alice/notes", false),
            (slash_id, Publish, "devices/alice-phone/extra/x", false),
            (plus_id, Read, "public/news", false),
            (plus_id, Publish, "devices/x/state", false),
            (dollar_id, Read, "$SYS/broker/uptime", false),
            // Only %u grants: an unusable username just grants nothing through them.
            (hash_user, Read, "users/#", false),
            (hash_user, Read, "users/anything/x", false),
            (hash_user, Publish, "devices/ok-id/x", true),
            (slash_user, Read, "users/carol/inbox/x", false),
            (slash_user, Read, "users/carol", false),
            (empty_user, Read, "users//x", false),
            (empty_user, Publish, "devices/ok-id/x", true),
        ],
    );
}

#[test]
fn deny_wins_over_grants_from_any_source() {
    let acl = Acl::parse(
        "user alice\n\
         topic readwrite #\n\
         pattern deny private/%u/#\n\
         topic deny $SYS/#\n\
         pattern read $SYS/#\n",
    )
    .unwrap();
    let warnings = acl.warnings();
    assert_eq!(warnings, &[AclWarning::PatternWithoutSubstitution { line: 5 }]);
    run_table(
        &acl,
        &[
            (ALICE, Read, "private/alice/diary", false),
            (ALICE, Publish, "private/alice", false),
            (ALICE, Read, "private/bob/diary", true),
            (CAROL, Read, "private/carol/x", false),
            // A user-block deny beats a pattern grant too.
            (ALICE, Read, "$SYS/broker/uptime", false),
            (CAROL, Read, "$SYS/broker/uptime", true),
            // '#' does not reach '$' topics.
            (ALICE, Read, "public", true),
            (ALICE, Publish, "$internal/x", false),
        ],
    );
}

#[test]
fn subscribe_requires_a_covering_read_rule() {
    let acl = Acl::parse(
        "topic read sensors/#\n\
         topic read a/+\n\
         topic read a/b\n\
         topic readwrite x/y\n\
         topic write w/#\n\
         topic deny sensors/secret/#\n\
         topic read $SYS/broker/#\n",
    )
    .unwrap();
    run_table(
        &acl,
        &[
            (ANON, Subscribe, "sensors/+/temp", true),
            (ANON, Subscribe, "sensors/kitchen/temp", true),
            (ANON, Subscribe, "sensors", true),
            (ANON, Subscribe, "a/b", true),
            (ANON, Subscribe, "a/+", true),
            (ANON, Subscribe, "a/#", false),
            (ANON, Subscribe, "a/b/c", false),
            (ANON, Subscribe, "+/b", false),
            (ANON, Subscribe, "#", false),
            (ANON, Subscribe, "x/y", true),
            (ANON, Subscribe, "w/x", false),
            (ANON, Subscribe, "$SYS/broker/+", true),
            (ANON, Subscribe, "$SYS/#", false),
            // A deny that only overlaps the filter leaves it to the delivery check...
            (ANON, Subscribe, "sensors/#", true),
            (ANON, Read, "sensors/secret/key", false),
            // ...one that covers it refuses the subscription.
            (ANON, Subscribe, "sensors/secret/#", false),
            (ANON, Subscribe, "sensors/secret/key", false),
            (ANON, Subscribe, "sensors/secret/+/x", false),
            // Invalid filters.
            (ANON, Subscribe, "a/#/b", false),
            (ANON, Subscribe, "", false),
            (ANON, Subscribe, "a+", false),
            // Fully readable: covered by a read rule and no deny overlaps.
            (ANON, FullyReadable, "sensors/kitchen/#", true),
            (ANON, FullyReadable, "sensors/+/temp", false),
            (ANON, FullyReadable, "sensors/#", false),
            (ANON, FullyReadable, "a/+", true),
            (ANON, FullyReadable, "x/y", true),
            (ANON, FullyReadable, "w/x", false),
            (ANON, FullyReadable, "a/#", false),
            (ANON, FullyReadable, "a/#/b", false),
        ],
    );
}

#[test]
fn paho_interop_nosubscribe_refuses_exactly_that_filter() {
    let anonymous = "topic readwrite #\ntopic deny test/nosubscribe\n";
    let everyone = "pattern readwrite #\npattern deny test/nosubscribe\n";
    for text in [anonymous, everyone] {
        let acl = Acl::parse(text).unwrap();
        let clients: &[ClientIdentity<'_>] = if text == everyone {
            &[ANON, ALICE, ClientIdentity::new("myclientid", Some("myusername"))]
        } else {
            &[ANON]
        };
        for &who in clients {
            run_table(
                &acl,
                &[
                    (who, Subscribe, "test/nosubscribe", false),
                    (who, Read, "test/nosubscribe", false),
                    (who, Subscribe, "#", true),
                    (who, Subscribe, "test/+", true),
                    (who, Subscribe, "test/nosubscribe/#", true),
                    (who, Subscribe, "TopicA/+", true),
                    (who, Subscribe, "TopicA/B", true),
                    (who, Subscribe, "+/+", true),
                    (who, Read, "TopicA/B", true),
                    (who, Publish, "TopicA/B", true),
                    (who, FullyReadable, "TopicA/#", true),
                    (who, FullyReadable, "test/+", false),
                    (who, FullyReadable, "#", false),
                ],
            );
        }
    }
}

#[test]
fn empty_acl_denies_everything() {
    for text in ["", "\n\n", "# only comments\n   \n", "user alice\n"] {
        let acl = Acl::parse(text).unwrap();
        for who in [ANON, ALICE] {
            for op in [Publish, Read, Subscribe, FullyReadable] {
                assert!(!check(&acl, who, op, "a/b"), "{text:?} {who:?} {op:?}");
            }
        }
    }
}

#[test]
fn allow_all_allows_everything() {
    let client = ClientAcl::allow_all();
    assert!(client.is_allow_all());
    assert!(client.can_publish("a/b"));
    assert!(client.can_read("$SYS/x"));
    assert!(client.can_subscribe("#"));
    assert!(client.subscription_fully_readable("#"));
    let acl = Acl::parse("topic read #\n").unwrap();
    assert!(!acl.for_client(&ANON).is_allow_all());
}

#[test]
fn user_blocks_merge_and_names_may_contain_spaces() {
    let acl = Acl::parse(
        "user alice\n\
         topic read one\n\
         user dave smith\n\
         topic read dave\n\
         user alice\n\
         topic read two\n\
         topic read with space/x\n\
         topic deny  spaced  out \n",
    )
    .unwrap();
    let dave = ClientIdentity::new("d", Some("dave smith"));
    run_table(
        &acl,
        &[
            (ALICE, Read, "one", true),
            (ALICE, Read, "two", true),
            (ALICE, Read, "with space/x", true),
            (ALICE, Read, "dave", false),
            (dave, Read, "dave", true),
            (dave, Read, "one", false),
            (ClientIdentity::new("d", Some("dave")), Read, "dave", false),
        ],
    );
}

#[test]
fn pattern_with_both_substitutions() {
    let acl = Acl::parse("pattern write %u/%c/+\npattern read shared/%u/%c\n").unwrap();
    let who = ClientIdentity::new("dev7", Some("alice"));
    run_table(
        &acl,
        &[
            (who, Publish, "alice/dev7/x", true),
            (who, Publish, "alice/dev8/x", false),
            (who, Read, "alice/dev7/x", false),
            (who, Read, "shared/alice/dev7", true),
            (ClientIdentity::new("dev7", None), Publish, "alice/dev7/x", false),
        ],
    );
}

#[test]
fn malformed_files_name_line_and_problem() {
    use AclLineProblem as P;
    let cases: Vec<(&str, usize, AclLineProblem)> = vec![
        ("topic", 1, P::MissingTopic),
        ("topic   ", 1, P::MissingTopic),
        ("topic read", 1, P::MissingTopic),
        ("pattern deny", 1, P::MissingTopic),
        ("topic reed a/b", 1, P::UnknownAccess("reed".into())),
        ("topic a b", 1, P::UnknownAccess("a".into())),
        ("topik read a", 1, P::UnknownKeyword("topik".into())),
        ("Topic read a", 1, P::UnknownKeyword("Topic".into())),
        ("user", 1, P::MissingUsername),
        ("user   \t", 1, P::MissingUsername),
        ("topic a/#/b", 1, P::InvalidFilter { filter: "a/#/b".into(), reason: FilterError::MisplacedMultiLevel }),
        ("topic read a+/b", 1, P::InvalidFilter { filter: "a+/b".into(), reason: FilterError::MisplacedSingleLevel }),
        ("pattern read dev/c%c/x", 1, P::MisplacedSubstitution("dev/c%c/x".into())),
        ("pattern read %u%c", 1, P::MisplacedSubstitution("%u%c".into())),
        (
            "pattern read dev/%c/#/x",
            1,
            P::InvalidFilter { filter: "dev/%c/#/x".into(), reason: FilterError::MisplacedMultiLevel },
        ),
        ("# fine\n\ntopic read a\nuser bob\ntopic read b\nbogus line", 6, P::UnknownKeyword("bogus".into())),
    ];
    for (text, line, problem) in cases {
        match Acl::parse(text) {
            Err(AclError::Line { path: None, line: l, problem: p }) => {
                assert_eq!((l, &p), (line, &problem), "text {text:?}");
            }
            other => panic!("expected a line error for {text:?}, got {other:?}"),
        }
    }
    let err = Acl::parse("topic read a\ntopic reed b\n").unwrap_err().to_string();
    assert_eq!(err, "line 2: unknown access type \"reed\" (expected read, write, readwrite or deny)");
}

#[test]
fn non_utf8_line_is_an_error() {
    let dir = std::env::temp_dir().join(format!("promptmq-auth-acl-utf8-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("acl");
    std::fs::write(&path, b"topic read a\ntopic read \xff\n").unwrap();
    let err = Acl::load(&path).unwrap_err();
    assert!(matches!(err, AclError::Line { line: 2, problem: AclLineProblem::NotUtf8, .. }), "{err:?}");
    assert!(err.to_string().starts_with(&format!("ACL file {}: line 2:", path.display())));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn load_reads_files() {
    let dir = std::env::temp_dir().join(format!("promptmq-auth-acl-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("acl");
    std::fs::write(&path, MAIN_ACL.replace('\n', "\r\n")).unwrap();
    let acl = Acl::load(&path).unwrap();
    assert!(acl.can_read(&ALICE, "alice/notes"));
    assert!(!acl.can_read(&ALICE, "alice/secret"));
    assert!(matches!(Acl::load(&dir.join("missing")), Err(AclError::Io { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn values_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Acl>();
    assert_send_sync::<ClientAcl>();
    assert_send_sync::<promptmq_auth::PasswordFile>();
    assert_send_sync::<AclError>();
    assert_send_sync::<promptmq_auth::PasswdError>();
}
