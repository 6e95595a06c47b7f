//! The matchmaker of one deployment: groups `request_matchmaking(client, mode)` calls into
//! matches by the rules of the mode. Pure bookkeeping, no I/O: the dispatcher feeds it requests
//! and departures and acts on what it answers.
//!
//! The rules, in order:
//! 1. A request joins the **smallest open match** of its mode (forming or started with room);
//!    only when there is none does it open a new one.
//! 2. Within that match it takes the first group (in manifest order) still **below its
//!    minimum**; when every group has its minimum, the group with the fewest players still
//!    below its maximum.
//! 3. A forming match **starts** once it has the mode's `min_players` and every group its
//!    minimum: all its members are placed together.
//! 4. A started match stays **open for backfill** up to `max_players` (and each group's maximum)
//!    until its logic ends it or every player has left it; a later request placed in it joins
//!    the running match at once.
//! 5. A client is in at most one match or queue; one that leaves a forming match frees its place.
//!
//! Example (mode `duel`, groups `red` 1..1 and `blue` 1..1): A opens match 1 in `red`; B joins
//! match 1 in `blue`, which then starts with A and B; C opens match 2. Example (mode `squad`,
//! 2..8 players, groups `a` 1..4 and `b` 1..4): A → `a`, B → `b`: the match starts with two;
//! C, D, ... backfill it (`a`, `b`, `a`, ...) until eight.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

/// A mode as the version's manifest declares it.
pub type ModeRules = rally_sdk::manifest::Mode;
/// A group (team) of a mode.
pub type GroupRules = rally_sdk::manifest::Group;

/// A match's number within its deployment's matchmaker.
pub type MatchId = u64;

/// What a request led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Waiting in a forming match.
    Queued { match_id: MatchId },
    /// The request completed a match: every member, with its group, starts now.
    Formed {
        match_id: MatchId,
        members: Vec<(Arc<str>, String)>,
    },
    /// Joined a match already running, in this group.
    Backfill { match_id: MatchId, group: String },
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    UnknownMode,
    AlreadyQueued,
}

#[derive(Debug)]
struct Match {
    mode: usize,
    /// Members per group, in manifest order, with when each asked.
    groups: Vec<Vec<(Arc<str>, Instant)>>,
    started: bool,
}

impl Match {
    fn size(&self) -> usize {
        self.groups.iter().map(Vec::len).sum()
    }
}

#[derive(Debug)]
pub struct Matchmaker {
    modes: Vec<ModeRules>,
    matches: HashMap<MatchId, Match>,
    /// Per mode, matches with room by (size, id): the first is the smallest, the oldest of
    /// equals.
    open: Vec<BTreeSet<(usize, MatchId)>>,
    /// Where each client is: its match and group index.
    members: HashMap<Arc<str>, (MatchId, usize)>,
    next_id: MatchId,
}

impl Matchmaker {
    pub fn new(modes: Vec<ModeRules>) -> Self {
        let open = modes.iter().map(|_| BTreeSet::new()).collect();
        Self {
            modes,
            matches: HashMap::new(),
            open,
            members: HashMap::new(),
            next_id: 1,
        }
    }

    pub fn has_mode(&self, mode: &str) -> bool {
        self.modes.iter().any(|rules| rules.name == mode)
    }

    /// The match and mode a client is in (queued or playing).
    pub fn match_of(&self, client_id: &str) -> Option<MatchId> {
        self.members.get(client_id).map(|(match_id, _)| *match_id)
    }

    /// The mode of a match.
    pub fn mode_of(&self, match_id: MatchId) -> Option<&str> {
        self.matches
            .get(&match_id)
            .map(|found| self.modes[found.mode].name.as_str())
    }

    /// Clients waiting in forming matches.
    pub fn queued(&self) -> usize {
        self.matches
            .values()
            .filter(|found| !found.started)
            .map(Match::size)
            .sum()
    }

    pub fn request(&mut self, client_id: Arc<str>, mode: &str) -> Result<Placement, Refusal> {
        let mode_index = self
            .modes
            .iter()
            .position(|rules| rules.name == mode)
            .ok_or(Refusal::UnknownMode)?;
        if self.members.contains_key(&client_id) {
            return Err(Refusal::AlreadyQueued);
        }
        let match_id = match self.open[mode_index].first() {
            Some(&(_, match_id)) => match_id,
            None => self.open_match(mode_index),
        };
        let rules = &self.modes[mode_index];
        let found = self.matches.get_mut(&match_id).expect("open matches exist");
        let size_before = found.size();
        let group = choose_group(rules, found).expect("an open match has a group with room");
        found.groups[group].push((client_id.clone(), Instant::now()));
        self.members.insert(client_id, (match_id, group));
        let size = found.size();
        let full = size >= rules.max_players as usize
            || rules
                .groups
                .iter()
                .zip(&found.groups)
                .all(|(group, members)| members.len() >= group.max_players as usize);
        let open = &mut self.open[mode_index];
        open.remove(&(size_before, match_id));
        if !full {
            open.insert((size, match_id));
        }
        let group_name = rules.groups[group].name.clone();
        if found.started {
            return Ok(Placement::Backfill {
                match_id,
                group: group_name,
            });
        }
        let ready = size >= rules.min_players as usize
            && rules
                .groups
                .iter()
                .zip(&found.groups)
                .all(|(group, members)| members.len() >= group.min_players as usize);
        if !ready {
            return Ok(Placement::Queued { match_id });
        }
        found.started = true;
        let members = found
            .groups
            .iter()
            .zip(&rules.groups)
            .flat_map(|(members, group)| {
                members
                    .iter()
                    .map(|(client, _)| (client.clone(), group.name.clone()))
            })
            .collect();
        Ok(Placement::Formed { match_id, members })
    }

    fn open_match(&mut self, mode: usize) -> MatchId {
        let match_id = self.next_id;
        self.next_id += 1;
        self.matches.insert(
            match_id,
            Match {
                mode,
                groups: self.modes[mode].groups.iter().map(|_| Vec::new()).collect(),
                started: false,
            },
        );
        self.open[mode].insert((0, match_id));
        match_id
    }

    /// A client leaves its queue or match; its place is free again (a started match keeps
    /// running, with room for backfill). Returns the match it left.
    pub fn leave(&mut self, client_id: &str) -> Option<MatchId> {
        let (match_id, group) = self.members.remove(client_id)?;
        let found = self.matches.get_mut(&match_id)?;
        let size_before = found.size();
        found.groups[group].retain(|(member, _)| &**member != client_id);
        let open = &mut self.open[found.mode];
        open.remove(&(size_before, match_id));
        if found.size() == 0 && !found.started {
            self.matches.remove(&match_id);
        } else if found.size() > 0 {
            // A running match everyone left takes nobody new: its logic is about to end it.
            open.insert((found.size(), match_id));
        }
        Some(match_id)
    }

    /// A match ended (its logic stopped it, or its runtime died): its members are free.
    pub fn end(&mut self, match_id: MatchId) -> Vec<Arc<str>> {
        let Some(found) = self.matches.remove(&match_id) else {
            return Vec::new();
        };
        self.open[found.mode].remove(&(found.size(), match_id));
        let members: Vec<Arc<str>> = found
            .groups
            .into_iter()
            .flatten()
            .map(|(client, _)| client)
            .collect();
        for member in &members {
            self.members.remove(member);
        }
        members
    }

    /// Requests waiting in forming matches since before `deadline`: they are withdrawn and
    /// returned with their mode.
    pub fn expire(&mut self, deadline: Instant) -> Vec<(Arc<str>, String)> {
        let expired: Vec<(Arc<str>, String)> = self
            .matches
            .values()
            .filter(|found| !found.started)
            .flat_map(|found| {
                let mode = &self.modes[found.mode].name;
                found
                    .groups
                    .iter()
                    .flatten()
                    .filter(|(_, since)| *since < deadline)
                    .map(move |(client, _)| (client.clone(), mode.clone()))
            })
            .collect();
        for (client, _) in &expired {
            self.leave(client);
        }
        expired
    }
}

/// The group a new member of `found` joins, by rule 2.
fn choose_group(rules: &ModeRules, found: &Match) -> Option<usize> {
    let below_min = rules
        .groups
        .iter()
        .zip(&found.groups)
        .position(|(group, members)| members.len() < group.min_players as usize);
    below_min.or_else(|| {
        rules
            .groups
            .iter()
            .zip(&found.groups)
            .enumerate()
            .filter(|(_, (group, members))| members.len() < group.max_players as usize)
            .min_by_key(|(index, (_, members))| (members.len(), *index))
            .map(|(index, _)| index)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn duel() -> ModeRules {
        ModeRules {
            name: "duel".into(),
            min_players: 2,
            max_players: 2,
            groups: vec![
                GroupRules {
                    name: "red".into(),
                    min_players: 1,
                    max_players: 1,
                },
                GroupRules {
                    name: "blue".into(),
                    min_players: 1,
                    max_players: 1,
                },
            ],
        }
    }

    fn squad() -> ModeRules {
        ModeRules {
            name: "squad".into(),
            min_players: 2,
            max_players: 4,
            groups: vec![
                GroupRules {
                    name: "a".into(),
                    min_players: 1,
                    max_players: 2,
                },
                GroupRules {
                    name: "b".into(),
                    min_players: 1,
                    max_players: 2,
                },
            ],
        }
    }

    fn id(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[test]
    fn a_duel_forms_with_one_player_per_group() {
        let mut matchmaker = Matchmaker::new(vec![duel()]);
        assert!(matches!(
            matchmaker.request(id("A"), "duel"),
            Ok(Placement::Queued { match_id: 1 })
        ));
        let formed = matchmaker.request(id("B"), "duel").unwrap();
        assert_eq!(
            formed,
            Placement::Formed {
                match_id: 1,
                members: vec![(id("A"), "red".into()), (id("B"), "blue".into())]
            }
        );
        // Full: the next request opens a new match.
        assert!(matches!(
            matchmaker.request(id("C"), "duel"),
            Ok(Placement::Queued { match_id: 2 })
        ));
        assert_eq!(matchmaker.queued(), 1);
    }

    #[test]
    fn refusals_unknown_mode_and_double_requests() {
        let mut matchmaker = Matchmaker::new(vec![duel()]);
        assert_eq!(
            matchmaker.request(id("A"), "chess"),
            Err(Refusal::UnknownMode)
        );
        matchmaker.request(id("A"), "duel").unwrap();
        assert_eq!(
            matchmaker.request(id("A"), "duel"),
            Err(Refusal::AlreadyQueued)
        );
    }

    #[test]
    fn a_started_match_takes_backfill_up_to_its_maximum() {
        let mut matchmaker = Matchmaker::new(vec![squad()]);
        matchmaker.request(id("A"), "squad").unwrap();
        assert!(matches!(
            matchmaker.request(id("B"), "squad").unwrap(),
            Placement::Formed { match_id: 1, .. }
        ));
        assert_eq!(
            matchmaker.request(id("C"), "squad").unwrap(),
            Placement::Backfill {
                match_id: 1,
                group: "a".into()
            }
        );
        assert_eq!(
            matchmaker.request(id("D"), "squad").unwrap(),
            Placement::Backfill {
                match_id: 1,
                group: "b".into()
            }
        );
        // Four is the maximum: E opens match 2.
        assert!(matches!(
            matchmaker.request(id("E"), "squad").unwrap(),
            Placement::Queued { match_id: 2 }
        ));
        // A leaves match 1: its place in group a is free, and match 1 (3 players) is not the
        // smallest open match any more than match 2 (1 player): F joins match 2.
        matchmaker.leave("A");
        assert!(matches!(
            matchmaker.request(id("F"), "squad").unwrap(),
            Placement::Formed { match_id: 2, .. }
        ));
    }

    #[test]
    fn leaving_a_forming_match_frees_the_place_and_timeouts_withdraw() {
        let mut matchmaker = Matchmaker::new(vec![duel()]);
        matchmaker.request(id("A"), "duel").unwrap();
        assert_eq!(matchmaker.leave("A"), Some(1));
        assert_eq!(matchmaker.queued(), 0);
        matchmaker.request(id("B"), "duel").unwrap();
        let expired = matchmaker.expire(Instant::now() + std::time::Duration::from_secs(1));
        assert_eq!(expired, vec![(id("B"), "duel".to_owned())]);
        assert_eq!(matchmaker.match_of("B"), None);
        // Ending a match frees its members.
        matchmaker.request(id("C"), "duel").unwrap();
        let Placement::Formed { match_id, .. } = matchmaker.request(id("D"), "duel").unwrap()
        else {
            panic!("formed")
        };
        assert_eq!(matchmaker.end(match_id).len(), 2);
        assert!(matchmaker.request(id("C"), "duel").is_ok());
    }

    #[test]
    fn ten_thousand_duel_requests_make_five_thousand_matches() {
        let mut matchmaker = Matchmaker::new(vec![duel()]);
        let formed = (0..10_000)
            .filter(|n| {
                matches!(
                    matchmaker.request(Arc::from(format!("c{n}")), "duel"),
                    Ok(Placement::Formed { .. })
                )
            })
            .count();
        assert_eq!(formed, 5_000);
        assert_eq!(matchmaker.queued(), 0);
    }
}
