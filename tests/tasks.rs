//! The data: duplication sequences and their loss mask, text splits and windows.

use reformer::model::config::PositionalConfig;
use reformer::run_config::RunConfig;
use reformer::tasks::duplication::Duplication;
use reformer::tasks::duplication::DuplicationConfig;
use reformer::tasks::text::{split_points, TextData, ENWIK8_BYTES};
use reformer::tasks::{SamplerRng, Split, Task};

#[test]
fn duplication_sequences_are_0_w_0_w() {
    let task = Duplication::new(DuplicationConfig { n_symbols: 16, copy_len: 20 });
    let mut rng = SamplerRng::new(1);
    for _ in 0..50 {
        let seq = task.sequence(&mut rng);
        assert_eq!(seq.len(), 42);
        assert_eq!(seq[0], 0);
        assert_eq!(seq[21], 0);
        assert_eq!(seq[1..21], seq[22..42]);
        assert!(seq[1..21].iter().all(|&s| (1..16).contains(&s)));
    }
}

#[test]
fn duplication_loss_mask_covers_exactly_the_second_copy() {
    let n = 7;
    let task = Duplication::new(DuplicationConfig { n_symbols: 16, copy_len: n });
    let batch = task.train_batch(3, &mut SamplerRng::new(2));
    assert_eq!(batch.inputs.size(), vec![3, 2 * n + 1]);
    let inputs: Vec<Vec<i64>> = (0..3).map(|b| Vec::<i64>::try_from(batch.inputs.get(b)).unwrap()).collect();
    let targets: Vec<Vec<i64>> = (0..3).map(|b| Vec::<i64>::try_from(batch.targets.get(b)).unwrap()).collect();
    let weights: Vec<f32> = Vec::<f32>::try_from(batch.weights.get(0)).unwrap();
    for b in 0..3 {
        // Targets are the inputs shifted by one.
        assert_eq!(inputs[b][1..], targets[b][..2 * n as usize]);
        for (j, &w) in weights.iter().enumerate() {
            // Target j is sequence element j + 1; the second copy is elements n+2 ..= 2n+1.
            let in_second_copy = j + 1 >= n as usize + 2;
            assert_eq!(w == 1.0, in_second_copy, "weight of target {j}");
            if in_second_copy {
                assert_eq!(targets[b][j], inputs[b][j - n as usize], "target {j} repeats the first copy");
            }
        }
    }
    assert_eq!(weights.iter().sum::<f32>(), n as f32);
}

/// The long-range duplication presets: sequences of their model's length whose second
/// copy is T/2 away, and axial positions whose second coordinate repeats with the copy
/// length (position p and p - n share it), which is what lets shared-QK attention find
/// the first copy.
#[test]
fn long_range_duplication_presets_put_the_second_copy_half_the_length_away() {
    for (name, length) in
        [("duplication-1k", 1024), ("duplication-4k", 4096), ("duplication-16k", 16384), ("duplication-64k", 65536)]
    {
        let cfg = RunConfig::preset(name).unwrap();
        cfg.validate().unwrap();
        let n = cfg.train.duplication.copy_len;
        assert_eq!(cfg.model.max_seq_len, length, "{name}");
        let tokens = 2 * n + 1;
        assert!((length - 8..=length).contains(&tokens), "{name}: {tokens} tokens per sequence");
        let PositionalConfig::Axial { shape, .. } = cfg.model.positional else { panic!("{name}: axial positions") };
        assert_eq!(n % shape[1], 0, "{name}: copy length {n} is not a multiple of the axial period {}", shape[1]);

        let task = cfg.build_task().unwrap();
        assert_eq!(task.seq_len(), 2 * n + 1);
        let batch = task.train_batch(1, &mut SamplerRng::new(3));
        let inputs = Vec::<i64>::try_from(batch.inputs.get(0)).unwrap();
        let targets = Vec::<i64>::try_from(batch.targets.get(0)).unwrap();
        let weights = Vec::<f32>::try_from(batch.weights.get(0)).unwrap();
        let n = n as usize;
        assert_eq!((inputs[0], inputs[n + 1]), (0, 0), "{name}: separators");
        for (j, &w) in weights.iter().enumerate() {
            assert_eq!(w == 1.0, j > n, "{name}: weight of target {j}");
            if j > n {
                assert_eq!(targets[j], inputs[j - n], "{name}: target {j} is the token n = {n} back");
            }
        }
    }
}

#[test]
fn validation_batches_are_fixed_and_training_batches_follow_the_rng() {
    let task = Duplication::new(DuplicationConfig { n_symbols: 16, copy_len: 5 });
    let a = task.valid_batches(2, 3);
    let b = task.valid_batches(2, 3);
    for (x, y) in a.iter().zip(&b) {
        assert!(x.inputs.equal(&y.inputs));
    }
    let mut rng1 = SamplerRng::new(9);
    let mut rng2 = SamplerRng::new(9);
    assert!(task.train_batch(2, &mut rng1).inputs.equal(&task.train_batch(2, &mut rng2).inputs));
    assert_eq!(rng1, rng2);
}

#[test]
fn enwik8_splits_are_the_standard_ones() {
    assert_eq!(split_points(ENWIK8_BYTES), (90_000_000, 95_000_000));
    assert_eq!(split_points(1000), (900, 950));
}

#[test]
fn text_splits_are_disjoint_in_order_and_windows_come_from_their_split() {
    // Bytes encode their split: 1 in train, 2 in valid, 3 in test.
    let len = 2000;
    let (valid_start, test_start) = split_points(len);
    let bytes: Vec<u8> = (0..len)
        .map(|i| {
            if i < valid_start {
                1
            } else if i < test_start {
                2
            } else {
                3
            }
        })
        .collect();
    let data = TextData::from_bytes(bytes, 16);
    assert_eq!(data.train.len() + data.valid.len() + data.test.len(), len);
    assert!(
        data.train.iter().all(|&b| b == 1) && data.valid.iter().all(|&b| b == 2) && data.test.iter().all(|&b| b == 3)
    );
    let batch = data.train_batch(8, &mut SamplerRng::new(3));
    assert_eq!(batch.inputs.size(), vec![8, 16]);
    assert!(batch.inputs.eq(1).all().int64_value(&[]) == 1 && batch.targets.eq(1).all().int64_value(&[]) == 1);
    for batch in data.valid_batches(4, 2) {
        assert!(batch.inputs.eq(2).all().int64_value(&[]) == 1);
    }
    let test = data.split_batches(Split::Test, 2, usize::MAX).unwrap();
    let n_windows: i64 = test.iter().map(|b| b.inputs.size()[0]).sum();
    assert_eq!(n_windows, ((data.test.len() - 1) / 16) as i64, "non-overlapping windows cover the test split");
    assert!(test.iter().all(|b| b.targets.eq(3).all().int64_value(&[]) == 1));
}

#[test]
fn text_windows_predict_the_next_byte() {
    let bytes: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
    let data = TextData::from_bytes(bytes, 32);
    let batch = data.train_batch(4, &mut SamplerRng::new(5));
    let next = (batch.inputs + 1).remainder(251);
    assert!(next.equal(&batch.targets));
}
