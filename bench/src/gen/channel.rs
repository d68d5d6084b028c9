//! The network between one machine and the receiver: loss, duplication and reordering.
//!
//! Each machine has its own channel, driven by its own random stream, applied to its datagrams
//! in the sender's order. [`MachinePlan::new`] turns a machine into the exact list of datagrams
//! that leave the generator for it, in order, and records which `packet_no` arrive at least
//! once: that set is what [`netoops_wire::model::expected`] needs, so expectations describe
//! what was actually sent.
//!
//! Per datagram, in this order: the loss model decides whether it is lost; a survivor is
//! duplicated with probability `duplicate` (the copy follows it); each copy is held back with
//! probability `reorder` behind up to `reorder_distance` later copies.

use std::fmt;
use std::str::FromStr;

use netoops_wire::SenderModel;

use super::rng::{Rng, Stream};
use super::scenario::{Machine, Scenario, ScenarioError};

/// How datagrams get lost.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LossModel {
    /// Nothing is lost.
    None,
    /// Each datagram is lost with probability `p`, independently.
    Independent { p: f64 },
    /// Gilbert-Elliott bursty loss: a Good and a Bad state; `p` = P(Good -> Bad) and
    /// `r` = P(Bad -> Good) per datagram; a datagram gets through with probability `k` in Good
    /// and `h` in Bad. `h = 0, k = 1` is the simple Gilbert model (every datagram in Bad lost).
    GilbertElliott { p: f64, r: f64, h: f64, k: f64 },
}

/// A `--loss-model` that does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadLossModel(pub String);

impl fmt::Display for BadLossModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad loss model {:?}: expected \"independent\" or \"gilbert:p,r[,h[,k]]\" with probabilities",
            self.0
        )
    }
}

impl std::error::Error for BadLossModel {}

impl LossModel {
    /// A model from its name and the independent loss rate: "independent" (uses `loss`) or
    /// "gilbert:p,r[,h[,k]]" (h defaults to 0, k to 1; `loss` is not used).
    pub fn parse(model: &str, loss: f64) -> Result<Self, BadLossModel> {
        let bad = || BadLossModel(model.to_string());
        if model == "independent" {
            return Ok(if loss > 0.0 {
                Self::Independent { p: loss }
            } else {
                Self::None
            });
        }
        let params = model.strip_prefix("gilbert:").ok_or_else(bad)?;
        let v: Vec<f64> = params
            .split(',')
            .map(|x| x.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| bad())?;
        let m = match v[..] {
            [p, r] => Self::GilbertElliott {
                p,
                r,
                h: 0.0,
                k: 1.0,
            },
            [p, r, h] => Self::GilbertElliott { p, r, h, k: 1.0 },
            [p, r, h, k] => Self::GilbertElliott { p, r, h, k },
            _ => return Err(bad()),
        };
        m.validate().map_err(|_| bad())?;
        Ok(m)
    }

    /// Every parameter is a probability.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let ok = |p: f64| (0.0..=1.0).contains(&p);
        let fine = match *self {
            Self::None => true,
            Self::Independent { p } => ok(p),
            Self::GilbertElliott { p, r, h, k } => ok(p) && ok(r) && ok(h) && ok(k),
        };
        if fine {
            Ok(())
        } else {
            Err(ScenarioError::Probability("loss"))
        }
    }

    /// The long-run share of datagrams lost.
    pub fn mean_loss(&self) -> f64 {
        match *self {
            Self::None => 0.0,
            Self::Independent { p } => p,
            Self::GilbertElliott { p, r, h, k } => {
                let bad = if p + r > 0.0 { p / (p + r) } else { 0.0 };
                (1.0 - bad) * (1.0 - k) + bad * (1.0 - h)
            }
        }
    }
}

impl fmt::Display for LossModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::None => f.write_str("none"),
            Self::Independent { p } => write!(f, "independent:{p}"),
            Self::GilbertElliott { p, r, h, k } => write!(f, "gilbert:{p},{r},{h},{k}"),
        }
    }
}

impl FromStr for LossModel {
    type Err = BadLossModel;

    /// "none", "independent:P" or "gilbert:p,r[,h[,k]]".
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "none" {
            return Ok(Self::None);
        }
        if let Some(p) = s.strip_prefix("independent:") {
            let p: f64 = p.parse().map_err(|_| BadLossModel(s.to_string()))?;
            let m = Self::Independent { p };
            m.validate().map_err(|_| BadLossModel(s.to_string()))?;
            return Ok(m);
        }
        Self::parse(s, 0.0)
    }
}

/// The loss state of one machine's path.
struct Channel {
    model: LossModel,
    bad: bool,
}

impl Channel {
    fn new(model: LossModel) -> Self {
        Self { model, bad: false }
    }

    /// Whether the next datagram is lost; advances the Gilbert-Elliott state.
    fn lose(&mut self, rng: &mut Rng) -> bool {
        match self.model {
            LossModel::None => false,
            LossModel::Independent { p } => rng.chance(p),
            LossModel::GilbertElliott { p, r, h, k } => {
                let delivered = if self.bad {
                    rng.chance(h)
                } else {
                    rng.chance(k)
                };
                let flip = if self.bad {
                    rng.chance(r)
                } else {
                    rng.chance(p)
                };
                self.bad ^= flip;
                !delivered
            }
        }
    }
}

/// One datagram that leaves the generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedSend {
    pub packet_no: u32,
    /// Sender round, 0 to 2.
    pub round: u8,
    /// This is the channel's extra copy of the datagram before it.
    pub duplicate: bool,
    /// This copy was held back behind later ones.
    pub reordered: bool,
}

/// Everything one machine sends, in order, and what of it arrives.
#[derive(Clone, Debug)]
pub struct MachinePlan {
    /// Datagrams in the order they leave.
    pub sends: Vec<PlannedSend>,
    /// Datagrams per round.
    pub packet_count: u32,
    /// Datagrams the loss model dropped (never sent).
    pub lost: u32,
    /// Extra copies sent.
    pub duplicated: u32,
    /// Copies sent later than their place.
    pub reordered: u32,
    delivered: Vec<u64>,
}

impl MachinePlan {
    /// The plan for `machine` under `scenario`'s channel parameters.
    pub fn new(scenario: &Scenario, machine: &Machine) -> Self {
        Self::of_sender(
            scenario,
            machine.index,
            machine.packet_count(),
            SenderModel::ROUNDS,
        )
    }

    /// The plan of machine `index` when its sender sends `packet_count` distinct datagrams
    /// (`packet_no` 0 up) `rounds` times over: netoops sends 3 rounds of its chunks, a
    /// netconsole sender 1 round of its datagrams.
    pub fn of_sender(scenario: &Scenario, index: u32, packet_count: u32, rounds: u32) -> Self {
        let mut rng = Rng::derive(scenario.seed, Stream::Channel, u64::from(index));
        let mut channel = Channel::new(scenario.loss);
        let mut delivered = vec![0u64; (packet_count as usize).div_ceil(64)];
        // (order key, send): key 2*pos in place, 2*(pos+d)+1 when held back d places.
        let mut keyed: Vec<(u64, PlannedSend)> =
            Vec::with_capacity((packet_count * rounds) as usize);
        let (mut lost, mut duplicated, mut reordered) = (0, 0, 0);
        let mut pos = 0u64;
        for round in 0..rounds {
            for packet_no in 0..packet_count {
                if channel.lose(&mut rng) {
                    lost += 1;
                    continue;
                }
                delivered[(packet_no / 64) as usize] |= 1 << (packet_no % 64);
                let copies = if rng.chance(scenario.duplicate) { 2 } else { 1 };
                for copy in 0..copies {
                    let hold = rng.chance(scenario.reorder);
                    let key = if hold {
                        let d = rng.between(1, u64::from(scenario.reorder_distance));
                        2 * (pos + d) + 1
                    } else {
                        2 * pos
                    };
                    keyed.push((
                        key,
                        PlannedSend {
                            packet_no,
                            round: round as u8,
                            duplicate: copy == 1,
                            reordered: hold,
                        },
                    ));
                    duplicated += copy;
                    reordered += u32::from(hold);
                    pos += 1;
                }
            }
        }
        keyed.sort_by_key(|&(key, _)| key);
        Self {
            sends: keyed.into_iter().map(|(_, s)| s).collect(),
            packet_count,
            lost,
            duplicated,
            reordered,
            delivered,
        }
    }

    /// Whether `packet_no` arrives at least once.
    pub fn delivered(&self, packet_no: u32) -> bool {
        self.delivered
            .get((packet_no / 64) as usize)
            .is_some_and(|w| w & (1 << (packet_no % 64)) != 0)
    }

    /// The `packet_no` of the first datagram that arrives (the receiver's "crash seen" packet).
    pub fn first_delivered(&self) -> Option<u32> {
        self.sends.first().map(|s| s.packet_no)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::scenario::SizeRange;

    fn scenario(loss: LossModel, duplicate: f64, reorder: f64) -> Scenario {
        Scenario {
            machines: 200,
            log_size: SizeRange {
                min: 16 * 1024,
                max: 64 * 1024,
            },
            loss,
            duplicate,
            reorder,
            ..Scenario::default()
        }
    }

    /// (sent, lost, duplicated, reordered, datagrams the sender made) over all machines.
    fn totals(s: &Scenario) -> (u64, u64, u64, u64, u64) {
        let mut t = (0, 0, 0, 0, 0);
        for i in 0..s.machines {
            let m = s.machine(i);
            let plan = MachinePlan::new(s, &m);
            t.0 += plan.sends.len() as u64;
            t.1 += u64::from(plan.lost);
            t.2 += u64::from(plan.duplicated);
            t.3 += u64::from(plan.reordered);
            t.4 += u64::from(3 * m.packet_count());
        }
        t
    }

    #[test]
    fn loss_models_parse() {
        assert_eq!(
            LossModel::parse("independent", 0.1),
            Ok(LossModel::Independent { p: 0.1 })
        );
        assert_eq!(LossModel::parse("independent", 0.0), Ok(LossModel::None));
        assert_eq!(
            LossModel::parse("gilbert:0.01,0.3", 0.5),
            Ok(LossModel::GilbertElliott {
                p: 0.01,
                r: 0.3,
                h: 0.0,
                k: 1.0
            })
        );
        assert_eq!(
            LossModel::parse("gilbert:0.01,0.3,0.2,0.99", 0.0),
            Ok(LossModel::GilbertElliott {
                p: 0.01,
                r: 0.3,
                h: 0.2,
                k: 0.99
            })
        );
        for bad in [
            "gilbert:",
            "gilbert:0.1",
            "gilbert:1.5,0.1",
            "bursty",
            "gilbert:a,b",
        ] {
            assert!(LossModel::parse(bad, 0.0).is_err(), "{bad}");
        }
        let m: LossModel = "gilbert:0.01,0.3,0.2,0.99".parse().unwrap();
        assert_eq!(m.to_string().parse::<LossModel>(), Ok(m));
        assert_eq!(
            "independent:0.25".parse(),
            Ok(LossModel::Independent { p: 0.25 })
        );
        assert_eq!("none".parse(), Ok(LossModel::None));
    }

    #[test]
    fn independent_loss_ratio_within_tolerance() {
        let s = scenario(LossModel::Independent { p: 0.1 }, 0.0, 0.0);
        let (sent, lost, dup, reo, made) = totals(&s);
        assert_eq!(sent + lost, made);
        assert_eq!((dup, reo), (0, 0));
        let ratio = lost as f64 / made as f64;
        assert!(
            (0.09..0.11).contains(&ratio),
            "loss ratio {ratio} over {made}"
        );
    }

    #[test]
    fn gilbert_elliott_is_bursty_with_the_stationary_rate() {
        let model = LossModel::GilbertElliott {
            p: 0.02,
            r: 0.25,
            h: 0.1,
            k: 0.995,
        };
        let want = model.mean_loss();
        let s = scenario(model, 0.0, 0.0);
        let (mut lost, mut made, mut runs) = (0u64, 0u64, 0u64);
        for i in 0..s.machines {
            let m = s.machine(i);
            let plan = MachinePlan::new(&s, &m);
            lost += u64::from(plan.lost);
            made += u64::from(3 * m.packet_count());
            // Runs of lost packet numbers in round 0 order (p ascending).
            let sent0: Vec<bool> = {
                let mut v = vec![false; m.packet_count() as usize];
                for send in plan.sends.iter().filter(|s| s.round == 0) {
                    v[send.packet_no as usize] = true;
                }
                v
            };
            runs += sent0.windows(2).filter(|w| w[0] && !w[1]).count() as u64;
        }
        let ratio = lost as f64 / made as f64;
        assert!(
            (want * 0.85..want * 1.15).contains(&ratio),
            "{ratio} vs {want}"
        );
        // Bursty: the mean run of losses in round 0 is well above the independent model's
        // 1 / (1 - loss) ~ 1.07.
        let lost0 = lost as f64 / 3.0;
        let mean_run = lost0 / runs as f64;
        assert!(mean_run > 2.0, "mean loss burst {mean_run}");
    }

    #[test]
    fn without_channel_effects_the_plan_is_the_sender_schedule() {
        let s = scenario(LossModel::None, 0.0, 0.0);
        let m = s.machine(3);
        let plan = MachinePlan::new(&s, &m);
        let log = m.log();
        let sender = SenderModel::new(&log[..m.split], &log[m.split..]);
        let got: Vec<(u32, u32)> = plan
            .sends
            .iter()
            .map(|s| (u32::from(s.round), s.packet_no))
            .collect();
        assert!(sender.schedule().eq(got.iter().copied()));
        assert!((0..plan.packet_count).all(|p| plan.delivered(p)));
        assert!(!plan.delivered(plan.packet_count));
        assert_eq!(plan.first_delivered(), Some(0));
    }

    #[test]
    fn duplicates_and_reordering_keep_every_datagram() {
        let s = scenario(LossModel::Independent { p: 0.05 }, 0.05, 0.1);
        let mut overtaken = 0;
        for i in 0..20 {
            let m = s.machine(i);
            let plan = MachinePlan::new(&s, &m);
            let dups = plan.sends.iter().filter(|s| s.duplicate).count() as u32;
            let held = plan.sends.iter().filter(|s| s.reordered).count() as u32;
            assert_eq!(dups, plan.duplicated);
            assert_eq!(held, plan.reordered);
            assert_eq!(
                plan.sends.len() as u32,
                3 * plan.packet_count - plan.lost + plan.duplicated
            );
            // Without the held-back copies, order is the sender's: (round, packet_no) ascending.
            let in_place: Vec<(u8, u32)> = plan
                .sends
                .iter()
                .filter(|s| !s.reordered)
                .map(|s| (s.round, s.packet_no))
                .collect();
            assert!(in_place.windows(2).all(|w| w[0] <= w[1]));
            // Held-back copies really come after later datagrams of the sender's order.
            for (at, send) in plan.sends.iter().enumerate().filter(|(_, s)| s.reordered) {
                overtaken += plan.sends[..at]
                    .iter()
                    .filter(|o| (o.round, o.packet_no) > (send.round, send.packet_no))
                    .count();
            }
        }
        let (_, _, dup, reo, made) = totals(&s);
        let dup_ratio = dup as f64 / made as f64;
        assert!((0.04..0.06).contains(&dup_ratio), "{dup_ratio}");
        assert!(reo > 0 && overtaken > 0);
    }
}
