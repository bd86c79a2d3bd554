//! Per-window, per-group measure state.

use serde_json::{Map, Value};

use super::hll::{hash64, HyperLogLog};
use super::{lookup, number, InvalidReason, Measure, MeasureOp};

/// What one record contributes to one measure.
pub(super) enum Input {
    /// Value missing or null: the measure ignores this record.
    Skip,
    /// For `count`: the record (or its counted field) is there.
    Present,
    Num(f64),
    Hash(u64),
}

impl Measure {
    pub(super) fn input(&self, obj: &Map<String, Value>) -> Result<Input, InvalidReason> {
        let Some(path) = &self.path else {
            return Ok(Input::Present);
        };
        let v = match lookup(obj, path) {
            None | Some(Value::Null) => return Ok(Input::Skip),
            Some(v) => v,
        };
        Ok(match self.op {
            MeasureOp::Count => Input::Present,
            // serde_json's default map is sorted, so this text is canonical for objects too.
            MeasureOp::ApproxDistinct => Input::Hash(hash64(v.to_string().as_bytes())),
            _ => Input::Num(number(v).ok_or(InvalidReason::NonNumericMeasure)?),
        })
    }
}

#[derive(Clone)]
enum Acc {
    Count(u64),
    Sum(Option<f64>),
    Avg { sum: f64, n: u64 },
    Min(Option<f64>),
    Max(Option<f64>),
    Distinct(HyperLogLog),
}

fn combine(a: Option<f64>, b: Option<f64>, f: fn(f64, f64) -> f64) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(f(a, b)),
        (a, b) => a.or(b),
    }
}

impl Acc {
    fn new(op: MeasureOp) -> Self {
        match op {
            MeasureOp::Count => Acc::Count(0),
            MeasureOp::Sum => Acc::Sum(None),
            MeasureOp::Avg => Acc::Avg { sum: 0.0, n: 0 },
            MeasureOp::Min => Acc::Min(None),
            MeasureOp::Max => Acc::Max(None),
            MeasureOp::ApproxDistinct => Acc::Distinct(HyperLogLog::default()),
        }
    }

    fn add(&mut self, input: &Input) {
        let x = match input {
            Input::Skip => return,
            Input::Num(x) => Some(*x),
            _ => None,
        };
        match (self, input) {
            (Acc::Count(n), _) => *n += 1,
            (Acc::Sum(s), _) => *s = combine(*s, x, |a, b| a + b),
            (Acc::Avg { sum, n }, Input::Num(x)) => {
                *sum += x;
                *n += 1;
            }
            (Acc::Min(m), _) => *m = combine(*m, x, f64::min),
            (Acc::Max(m), _) => *m = combine(*m, x, f64::max),
            (Acc::Distinct(h), Input::Hash(x)) => h.insert_hash(*x),
            // Inputs are built per measure op, so no other pairing occurs.
            _ => {}
        }
    }

    fn merge(&mut self, other: &Acc) {
        match (self, other) {
            (Acc::Count(a), Acc::Count(b)) => *a += b,
            (Acc::Sum(a), Acc::Sum(b)) => *a = combine(*a, *b, |a, b| a + b),
            (Acc::Avg { sum, n }, Acc::Avg { sum: s2, n: n2 }) => {
                *sum += s2;
                *n += n2;
            }
            (Acc::Min(a), Acc::Min(b)) => *a = combine(*a, *b, f64::min),
            (Acc::Max(a), Acc::Max(b)) => *a = combine(*a, *b, f64::max),
            (Acc::Distinct(a), Acc::Distinct(b)) => a.merge(b),
            _ => {}
        }
    }

    fn value(&self) -> Value {
        match self {
            Acc::Count(n) => Value::from(*n),
            Acc::Sum(x) | Acc::Min(x) | Acc::Max(x) => x.map_or(Value::Null, num),
            Acc::Avg { n: 0, .. } => Value::Null,
            Acc::Avg { sum, n } => num(sum / *n as f64),
            Acc::Distinct(h) => Value::from(h.estimate().round() as u64),
        }
    }
}

/// Whole numbers print as `12`, not `12.0`; beyond 2^53 an f64 is no longer exact anyway.
fn num(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9_007_199_254_740_992.0 {
        Value::from(x as i64)
    } else {
        Value::from(x)
    }
}

/// One group's state inside one window.
#[derive(Clone)]
pub(super) struct Cell {
    pub group: Vec<Value>,
    accs: Vec<Acc>,
}

impl Cell {
    pub fn new(group: Vec<Value>, measures: &[Measure]) -> Self {
        let accs = measures.iter().map(|m| Acc::new(m.op)).collect();
        Self { group, accs }
    }

    pub fn add(&mut self, inputs: &[Input]) {
        self.accs.iter_mut().zip(inputs).for_each(|(a, i)| a.add(i));
    }

    pub fn merge(&mut self, other: &Cell) {
        self.accs
            .iter_mut()
            .zip(&other.accs)
            .for_each(|(a, b)| a.merge(b));
    }

    pub fn values(&self) -> impl Iterator<Item = Value> + '_ {
        self.accs.iter().map(Acc::value)
    }
}
