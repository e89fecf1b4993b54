//! Properties of the zone rules, over random command sequences.

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use serval_domain::zone::{self, DcrShutdownMode, Zone, ZoneCommand, ZoneContext, ZonePatch};
use serval_domain::{Actor, EventMeta};

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ a-zA-Z0-9./_-]{0,20}",
        Just("CARACAL.SYS/x".to_owned()),
        "[a-z]{119,122}"
    ]
}

fn command() -> impl Strategy<Value = ZoneCommand> {
    let patch = (
        proptest::option::of(text()),
        proptest::option::of(prop_oneof![
            "[a-z0-9-]{1,10}",
            Just("caracal-sys-a".to_owned()),
            "[A-Z_ ]{1,4}"
        ]),
        proptest::option::of(any::<bool>()),
        proptest::option::of(prop_oneof![
            Just(DcrShutdownMode::KeepLive),
            Just(DcrShutdownMode::RevokeLive)
        ]),
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(
            |(
                name,
                slug,
                dcr_enabled,
                dcr_shutdown,
                operator_coauthor_badge,
                operator_governed,
            )| {
                ZoneCommand::Update(ZonePatch {
                    name,
                    slug,
                    dcr_enabled,
                    dcr_shutdown,
                    operator_coauthor_badge,
                    operator_governed,
                })
            },
        );
    prop_oneof![
        (text(), any::<bool>()).prop_map(|(name, dcr_enabled)| ZoneCommand::Create {
            slug: zone::slug_base(&name),
            name,
            dcr_enabled,
        }),
        patch,
        Just(ZoneCommand::Archive),
    ]
}

fn run(commands: &[(ZoneCommand, u64)], bootstrap: bool) -> (Option<Zone>, u64) {
    let mut state: Option<Zone> = None;
    let mut applied = 0u64;
    for (i, (cmd, live)) in commands.iter().enumerate() {
        let ctx = ZoneContext {
            actor: Actor {
                id: format!("admin:{i}"),
                is_bootstrap: bootstrap,
                via_operator_header: i % 2 == 0,
            },
            live_dcr_applications: *live,
        };
        if let Ok(events) = zone::decide(state.as_ref(), cmd, &ctx) {
            for e in events {
                applied += 1;
                let meta = EventMeta {
                    event_id: format!("e{applied}"),
                    aggregate_id: "z".into(),
                    aggregate_version: applied,
                    occurred_at: Utc
                        .timestamp_opt(1_700_000_000 + applied as i64, 0)
                        .unwrap(),
                };
                state = zone::evolve(state, &meta, &e);
            }
        }
    }
    (state, applied)
}

proptest! {
    #[test]
    fn accepted_commands_only_ever_produce_valid_zones(
        commands in proptest::collection::vec((command(), 0u64..3), 1..30),
        bootstrap in any::<bool>(),
    ) {
        let (state, applied) = run(&commands, bootstrap);
        if let Some(z) = state {
            prop_assert_eq!(z.version, applied, "one version per event");
            prop_assert_eq!(z.name.trim(), z.name.as_str());
            prop_assert!((1..=120).contains(&z.name.chars().count()));
            prop_assert!(zone::validate_slug(&z.slug).is_ok());
            prop_assert!(z.created_at <= z.updated_at);
            prop_assert!(z.created_by.starts_with("admin:"));
            if !bootstrap {
                prop_assert!(!z.is_system(), "only the bootstrap token enters caracal.sys");
            }
        } else {
            prop_assert_eq!(applied, 0, "no events without a created zone");
        }
    }

    #[test]
    fn an_archived_zone_accepts_no_further_command(
        commands in proptest::collection::vec((command(), 0u64..3), 0..20),
        next in command(),
    ) {
        let (state, _) = run(&commands, true);
        if let Some(z) = state.filter(|z| z.archived_at.is_some()) {
            let ctx = ZoneContext { actor: Actor::system(), live_dcr_applications: 0 };
            let r = zone::decide(Some(&z), &next, &ctx);
            match next {
                ZoneCommand::Create { .. } => prop_assert_eq!(r, Err(zone::ZoneError::AlreadyExists)),
                _ => prop_assert_eq!(r, Err(zone::ZoneError::NotFound)),
            }
        }
    }
}
