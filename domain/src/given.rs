//! The aggregate test harness: `given(past events).when(command, context).then(…)`.
//!
//! Every aggregate's tests state a rule the same way: the history it starts from, the
//! command, and the events (or the error) `decide` must answer. `then_state` also folds the
//! decided events with `evolve`, so a test sees the state a projection would build.
//! Event metadata is synthetic and deterministic: version `n` gets event id `e<n>` and
//! occurred-at `2023-11-14T22:13:20Z + n s`.

use std::fmt::Debug;

use chrono::{DateTime, Duration, Utc};

use crate::event::EventMeta;

/// An aggregate's pure rules as the harness drives them.
pub trait Aggregate {
    type State: Clone + Debug;
    type Command;
    /// What `decide` knows besides the state and the command (actor, zone facts, stamp).
    type Context;
    type Event: Clone + PartialEq + Debug;
    type Error: PartialEq + Debug;

    fn decide(
        state: Option<&Self::State>,
        command: &Self::Command,
        ctx: &Self::Context,
    ) -> Result<Vec<Self::Event>, Self::Error>;

    fn evolve(
        state: Option<Self::State>,
        meta: &EventMeta,
        event: &Self::Event,
    ) -> Option<Self::State>;
}

/// The aggregate id the harness gives every history.
pub const AGGREGATE_ID: &str = "agg-1";

/// Deterministic metadata of the event that brings the aggregate to `version`.
pub fn meta(version: u64) -> EventMeta {
    EventMeta {
        event_id: format!("e{version}"),
        aggregate_id: AGGREGATE_ID.to_owned(),
        aggregate_version: version,
        occurred_at: epoch() + Duration::seconds(version as i64),
    }
}

fn epoch() -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + Duration::seconds(1_700_000_000)
}

/// A history folded with `evolve`.
#[must_use = "a history asserts nothing until `when(..).then(..)`"]
pub struct Given<A: Aggregate> {
    state: Option<A::State>,
    version: u64,
}

/// Starts a test from `events` (in order, versions 1, 2, …).
pub fn given<A: Aggregate>(events: impl IntoIterator<Item = A::Event>) -> Given<A> {
    let mut g = Given {
        state: None,
        version: 0,
    };
    for e in events {
        g.version += 1;
        g.state = A::evolve(g.state.take(), &meta(g.version), &e);
    }
    g
}

impl<A: Aggregate> Given<A> {
    /// The state the history folds to.
    pub fn state(&self) -> Option<&A::State> {
        self.state.as_ref()
    }

    /// Decides `command` on the history's state.
    pub fn when(self, command: &A::Command, ctx: &A::Context) -> When<A> {
        let result = A::decide(self.state.as_ref(), command, ctx);
        When {
            given: self,
            result,
        }
    }

    /// Decides `command` and, when it succeeds, folds its events into the history, so a test
    /// can go on with the next command.
    pub fn and(self, command: &A::Command, ctx: &A::Context) -> Given<A> {
        let (given, events) = self.when(command, ctx).events();
        given.fold(events)
    }
}

/// A decision taken on a history.
#[must_use = "a decision asserts nothing until `then`, `then_error` or `then_state`"]
pub struct When<A: Aggregate> {
    given: Given<A>,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> When<A> {
    /// `decide` answered exactly these events.
    #[track_caller]
    pub fn then(self, expected: &[A::Event]) -> Given<A> {
        match &self.result {
            Ok(events) => assert_eq!(events.as_slice(), expected, "decided events"),
            Err(e) => panic!("expected events {expected:?}, decide refused: {e:?}"),
        }
        self.apply()
    }

    /// `decide` refused with exactly this error.
    #[track_caller]
    pub fn then_error(self, expected: A::Error) {
        match self.result {
            Ok(events) => panic!("expected {expected:?}, decide answered {events:?}"),
            Err(e) => assert_eq!(e, expected, "decide's refusal"),
        }
    }

    /// `decide` succeeded; its events (for assertions on their fields) and the history, to
    /// fold them into.
    #[track_caller]
    pub fn events(self) -> (Given<A>, Vec<A::Event>) {
        match self.result {
            Ok(events) => (self.given, events),
            Err(e) => panic!("expected events, decide refused: {e:?}"),
        }
    }

    /// `decide` succeeded; the state after its events.
    #[track_caller]
    pub fn then_state(self) -> Option<A::State> {
        self.apply().state
    }

    /// What `decide` answered.
    pub fn result(&self) -> &Result<Vec<A::Event>, A::Error> {
        &self.result
    }

    /// The history the decision was taken on, without the decided events (a refusal, or a
    /// decision a test only inspects, changes nothing).
    pub fn history(self) -> Given<A> {
        self.given
    }

    #[track_caller]
    fn apply(self) -> Given<A> {
        let (given, events) = self.events();
        given.fold(events)
    }
}

impl<A: Aggregate> Given<A> {
    fn fold(mut self, events: Vec<A::Event>) -> Given<A> {
        for e in &events {
            self.version += 1;
            self.state = A::evolve(self.state.take(), &meta(self.version), e);
        }
        self
    }
}

macro_rules! aggregate {
    ($(#[$doc:meta])* $name:ident, $module:path, $state:ty, $command:ty, $ctx:ty, $event:ty, $error:ty) => {
        $(#[$doc])*
        pub struct $name;

        impl Aggregate for $name {
            type State = $state;
            type Command = $command;
            type Context = $ctx;
            type Event = $event;
            type Error = $error;

            fn decide(
                state: Option<&$state>,
                command: &$command,
                ctx: &$ctx,
            ) -> Result<Vec<$event>, $error> {
                use $module as m;
                m::decide(state, command, ctx)
            }

            fn evolve(state: Option<$state>, meta: &EventMeta, event: &$event) -> Option<$state> {
                use $module as m;
                m::evolve(state, meta, event)
            }
        }
    };
}

aggregate!(
    /// A zone (`zone.rs`).
    ZoneAggregate,
    crate::zone,
    crate::zone::Zone,
    crate::zone::ZoneCommand,
    crate::zone::ZoneContext,
    crate::zone::ZoneEvent,
    crate::zone::ZoneError
);
aggregate!(
    /// An admin token (`admin_token.rs`).
    AdminTokenAggregate,
    crate::admin_token,
    crate::admin_token::AdminToken,
    crate::admin_token::AdminTokenCommand,
    crate::actor::Actor,
    crate::admin_token::AdminTokenEvent,
    crate::admin_token::AdminTokenError
);
aggregate!(
    /// A policy and its immutable versions (`policy/policies.rs`).
    PolicyAggregate,
    crate::policy::policies,
    crate::policy::policies::Policy,
    crate::policy::policies::PolicyCommand,
    crate::policy::policies::PolicyContext,
    crate::policy::policies::PolicyEvent,
    crate::policy::policies::PolicyError
);
aggregate!(
    /// A catalog object: application, provider, resource, grant, connection, authority
    /// record, session or approval hold (`catalog/`).
    CatalogAggregate,
    crate::catalog,
    crate::catalog::Entity,
    crate::catalog::CatalogCommand,
    crate::catalog::Stamp,
    crate::catalog::CatalogEvent,
    crate::catalog::CatalogError
);

/// A zone's policy sets, one aggregate per zone (`policy/policy_sets.rs`); the empty
/// history is the empty catalog.
pub struct PolicySetsAggregate;

impl Aggregate for PolicySetsAggregate {
    type State = crate::policy::policy_sets::Catalog;
    type Command = crate::policy::policy_sets::PolicySetCommand;
    type Context = crate::policy::policy_sets::PolicySetContext;
    type Event = crate::policy::policy_sets::PolicySetEvent;
    type Error = crate::policy::policy_sets::PolicySetError;

    fn decide(
        state: Option<&Self::State>,
        command: &Self::Command,
        ctx: &Self::Context,
    ) -> Result<Vec<Self::Event>, Self::Error> {
        let empty = Self::State::default();
        crate::policy::policy_sets::decide(state.unwrap_or(&empty), command, ctx)
    }

    fn evolve(
        state: Option<Self::State>,
        meta: &EventMeta,
        event: &Self::Event,
    ) -> Option<Self::State> {
        Some(crate::policy::policy_sets::evolve(
            state.unwrap_or_default(),
            meta.aggregate_version,
            event,
        ))
    }
}
