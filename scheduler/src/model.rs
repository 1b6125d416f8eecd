//! A robust online linear model `y = intercept + slope × x`, used for a device's compute
//! time (x = items, y = µs) and for a node's link (x = bytes, y = µs).
//!
//! Why medians: a mean or least-squares fit is moved without bound by one outlier (the
//! StarPU report where one 100 ms spike on a 190 µs kernel left 6 of 8 GPUs idle). Here
//! the slope is the median of per-sample slopes over a window, and the intercept the
//! median residual, so one spike, or several in a window of 16, changes nothing. A real
//! change of speed shows as a run of same-signed large residuals, which flushes the
//! window so that the model follows within two packets.

/// Samples kept per model.
const WINDOW: usize = 16;
/// Consecutive same-signed residuals above [`CHANGE_THRESHOLD`] that mean "the speed
/// changed" rather than "noise". Two: packets can be long, so waiting for more would cost
/// whole packets run on a wrong model; a single spike still changes nothing.
const CHANGE_RUN: usize = 2;
/// Relative residual counted as large by the change detector.
const CHANGE_THRESHOLD: f64 = 0.25;

#[derive(Debug, Clone)]
pub(crate) struct RobustLine {
    xs: [f64; WINDOW],
    ys: [f64; WINDOW],
    len: usize,
    head: usize,
    intercept: f64,
    slope: f64,
    /// Sign (+1/-1) and length of the current run of large residuals.
    run_sign: f64,
    run_len: usize,
    samples: u64,
    /// The window's per-sample slopes (samples with `x > 0`), sorted, as computed with
    /// the intercept `sorted_for`; `None` when not current. While the intercept stays
    /// put (packet sizes too alike to fit it, the common steady state), each new sample
    /// updates this in O(window) moves instead of a fresh selection: a third of the
    /// scheduler's cost per decision was that refit.
    sorted_for: Option<f64>,
    sorted: [f64; WINDOW],
    sorted_len: usize,
}

impl RobustLine {
    /// A model predicting `intercept + slope × x` until samples arrive.
    pub(crate) fn new(intercept: f64, slope: f64) -> Self {
        RobustLine {
            xs: [0.0; WINDOW],
            ys: [0.0; WINDOW],
            len: 0,
            head: 0,
            intercept: intercept.max(0.0),
            slope: slope.max(0.0),
            run_sign: 0.0,
            run_len: 0,
            samples: 0,
            sorted_for: None,
            sorted: [0.0; WINDOW],
            sorted_len: 0,
        }
    }

    pub(crate) fn intercept(&self) -> f64 {
        self.intercept
    }

    pub(crate) fn slope(&self) -> f64 {
        self.slope
    }

    pub(crate) fn samples(&self) -> u64 {
        self.samples
    }

    pub(crate) fn predict(&self, x: f64) -> f64 {
        self.intercept + self.slope * x
    }

    /// Adds a sample and refits. Samples with `x == 0` refine only the intercept.
    pub(crate) fn add(&mut self, x: f64, y: f64) {
        if !(x.is_finite() && y.is_finite()) || x < 0.0 || y < 0.0 {
            return;
        }
        self.track_change(x, y);
        let evicted = (self.len == WINDOW).then(|| (self.xs[self.head], self.ys[self.head]));
        self.xs[self.head] = x;
        self.ys[self.head] = y;
        self.head = (self.head + 1) % WINDOW;
        self.len = (self.len + 1).min(WINDOW);
        self.samples += 1;
        self.refit(evicted, (x, y));
    }

    /// The slope sample `(x, y)` gives with intercept `c` (`None` for `x == 0`).
    fn sample_slope(x: f64, y: f64, c: f64) -> Option<f64> {
        (x > 0.0).then(|| ((y - c) / x).max(0.0))
    }

    /// Brings the sorted slopes up to date for the current window and intercept after
    /// `evicted` left and `added` came in; returns `false` (nothing updated) when the
    /// cache is not current and must be rebuilt.
    fn update_sorted(&mut self, evicted: Option<(f64, f64)>, added: (f64, f64)) -> bool {
        let c = self.intercept;
        if self.sorted_for != Some(c) {
            return false;
        }
        if let Some(old) = evicted.and_then(|(x, y)| Self::sample_slope(x, y, c)) {
            // The same arithmetic on the same sample gives the same bits.
            let Some(i) = self.sorted[..self.sorted_len]
                .iter()
                .position(|v| v.to_bits() == old.to_bits())
            else {
                return false;
            };
            self.sorted.copy_within(i + 1..self.sorted_len, i);
            self.sorted_len -= 1;
        }
        if let Some(new) = Self::sample_slope(added.0, added.1, c) {
            let n = self.sorted_len;
            let i = self.sorted[..n].partition_point(|v| v.total_cmp(&new).is_lt());
            self.sorted.copy_within(i..n, i + 1);
            self.sorted[i] = new;
            self.sorted_len += 1;
        }
        true
    }

    fn rebuild_sorted(&mut self) {
        let c = self.intercept;
        let mut m = 0;
        for i in 0..self.len {
            if let Some(v) = Self::sample_slope(self.xs[i], self.ys[i], c) {
                self.sorted[m] = v;
                m += 1;
            }
        }
        self.sorted[..m].sort_unstable_by(f64::total_cmp);
        self.sorted_len = m;
        self.sorted_for = Some(c);
    }

    /// Flushes all but the last `CHANGE_RUN - 1` samples (plus the one being added) when
    /// the residuals say the device's speed changed.
    fn track_change(&mut self, x: f64, y: f64) {
        if self.samples == 0 || self.slope <= 0.0 {
            return;
        }
        let predicted = self.predict(x);
        if predicted <= 0.0 {
            return;
        }
        let residual = (y - predicted) / predicted;
        if residual.abs() < CHANGE_THRESHOLD {
            self.run_len = 0;
            return;
        }
        let sign = residual.signum();
        if self.run_len > 0 && sign == self.run_sign {
            self.run_len += 1;
        } else {
            self.run_sign = sign;
            self.run_len = 1;
        }
        if self.run_len >= CHANGE_RUN {
            let keep = (CHANGE_RUN - 1).min(self.len);
            let mut xs = [0.0; WINDOW];
            let mut ys = [0.0; WINDOW];
            for k in 0..keep {
                let i = (self.head + WINDOW - keep + k) % WINDOW;
                xs[k] = self.xs[i];
                ys[k] = self.ys[i];
            }
            self.xs = xs;
            self.ys = ys;
            self.len = keep;
            self.head = keep % WINDOW;
            self.run_len = 0;
            self.sorted_for = None;
        }
    }

    fn refit(&mut self, evicted: Option<(f64, f64)>, added: (f64, f64)) {
        let n = self.len;
        let (mut min_x, mut max_x, mut min_y) = (f64::INFINITY, 0.0f64, f64::INFINITY);
        for i in 0..n {
            min_x = min_x.min(self.xs[i]);
            max_x = max_x.max(self.xs[i]);
            min_y = min_y.min(self.ys[i]);
        }
        // The intercept is only identifiable when packet sizes differ enough; otherwise
        // keep the prior (start-up cost from the device's spec) and fit the slope alone.
        let spread = max_x > 0.0 && min_x < 0.5 * max_x;
        if !spread {
            // Only the slope is fitted, against a fixed intercept: the median of the
            // sorted slopes, kept up to date sample by sample. Same result as the
            // selection below (the median of the same values).
            if !self.update_sorted(evicted, added) {
                self.rebuild_sorted();
            }
            let m = self.sorted_len;
            if m > 0 {
                let mid = m / 2;
                self.slope = if m % 2 == 1 {
                    self.sorted[mid]
                } else {
                    0.5 * (self.sorted[mid - 1] + self.sorted[mid])
                };
            }
            if n > 0 && self.xs[..n].iter().all(|&x| x == 0.0) {
                let mut ys = self.ys;
                self.intercept = median(&mut ys[..n]);
            }
            return;
        }
        // The intercept moves on every sample here: the sorted slopes go stale.
        self.sorted_for = None;
        let mut buf = [0.0; WINDOW];
        for _ in 0..2 {
            let mut m = 0;
            for i in 0..n {
                if self.xs[i] > 0.0 {
                    buf[m] = ((self.ys[i] - self.intercept) / self.xs[i]).max(0.0);
                    m += 1;
                }
            }
            if m > 0 {
                self.slope = median(&mut buf[..m]);
            }
            // Residuals weighted by 1/y²: the noise of a timing grows with its length, so
            // short packets say most about the fixed cost.
            let mut pairs = [(0.0, 0.0); WINDOW];
            for (pair, (&x, &y)) in pairs.iter_mut().zip(self.xs.iter().zip(&self.ys)).take(n) {
                let w = y.max(1e-9);
                *pair = (y - self.slope * x, 1.0 / (w * w));
            }
            self.intercept = weighted_median(&mut pairs[..n]).clamp(0.0, min_y);
        }
    }
}

/// Weighted median of non-empty `(value, weight)` pairs.
fn weighted_median(v: &mut [(f64, f64)]) -> f64 {
    v.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let half = 0.5 * v.iter().map(|p| p.1).sum::<f64>();
    let mut acc = 0.0;
    for &(value, weight) in v.iter() {
        acc += weight;
        if acc >= half {
            return value;
        }
    }
    v[v.len() - 1].0
}

/// Median of a non-empty slice (mean of the two middle values for even lengths).
fn median(v: &mut [f64]) -> f64 {
    let n = v.len();
    let mid = n / 2;
    let (_, upper, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    let upper = *upper;
    if n % 2 == 1 {
        upper
    } else {
        let lower = v[..mid].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        0.5 * (lower + upper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_an_exact_line() {
        let mut m = RobustLine::new(0.0, 1.0);
        for &x in &[100.0, 400.0, 1000.0, 50.0, 2000.0] {
            m.add(x, 20.0 + 0.5 * x);
        }
        assert!((m.slope() - 0.5).abs() < 1e-3, "{}", m.slope());
        assert!((m.intercept() - 20.0).abs() < 0.5, "{}", m.intercept());
    }

    #[test]
    fn one_spike_does_not_move_the_model() {
        // StarPU's report: a 190 µs kernel, one timing of 100 ms.
        let mut m = RobustLine::new(5.0, 1.0);
        for i in 0..40 {
            let y = if i == 20 { 100_000.0 } else { 190.0 };
            m.add(1000.0, y);
            assert!(
                (m.predict(1000.0) - 190.0).abs() < 0.05 * 190.0,
                "after sample {i}: {}",
                m.predict(1000.0)
            );
        }
    }

    #[test]
    fn follows_a_change_of_speed_within_a_few_samples() {
        let mut m = RobustLine::new(0.0, 1.0);
        for _ in 0..16 {
            m.add(1000.0, 1000.0);
        }
        let mut converged_after = None;
        for i in 0..16 {
            m.add(1000.0, 3000.0);
            if converged_after.is_none() && (m.predict(1000.0) - 3000.0).abs() < 0.05 * 3000.0 {
                converged_after = Some(i + 1);
            }
        }
        let after = converged_after.expect("never converged");
        assert!(after <= CHANGE_RUN, "converged after {after} samples");
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    /// The incremental refit gives exactly what a fresh fit of the same window gives.
    #[test]
    fn incremental_refit_equals_a_fresh_fit() {
        let mut m = RobustLine::new(3.0, 1.0);
        let mut seed = 7u64;
        for i in 0..500 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let noise = (seed >> 40) as f64 / (1u64 << 24) as f64;
            // Long runs of equal sizes (slope only), then mixed sizes (both fitted).
            let x = if (i / 100) % 2 == 0 {
                1000.0
            } else {
                100.0 + 900.0 * noise
            };
            let slow = if (200..260).contains(&i) { 3.0 } else { 1.0 };
            let y = slow * (5.0 + 0.5 * x) * (0.9 + 0.2 * noise);
            // The same model without its sorted slopes fits the window from scratch.
            let mut fresh = m.clone();
            fresh.sorted_for = None;
            fresh.add(x, y);
            m.add(x, y);
            assert_eq!(m.slope().to_bits(), fresh.slope().to_bits(), "sample {i}");
            assert_eq!(
                m.intercept().to_bits(),
                fresh.intercept().to_bits(),
                "sample {i}"
            );
        }
    }
}
