//! Linear layers through oneDNN's matmul (`model::dense::linear`) against libtorch's own
//! `linear`: outputs and the gradients of input, weight and bias, for one row to many,
//! 2-D and 3-D inputs, with and without bias; and libtorch's own under autocast.

use reformer::model::dense::linear;
use reformer::model::seeded_random;
use reformer::precision::Precision;
use tch::{nn, Device, Kind, Tensor};

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// Output and gradients (input, weight, bias if any) of `f` applied to x.
fn value_and_grads(f: impl Fn(&Tensor) -> Tensor, x: &Tensor, layer: &nn::Linear) -> Vec<Tensor> {
    let x = x.detach().set_requires_grad(true);
    let out = f(&x);
    let probe = seeded_random::normal(7, &out.size(), Device::Cpu);
    let mut wrt = vec![&x, &layer.ws];
    wrt.extend(&layer.bs);
    let mut all = vec![out.detach()];
    all.extend(Tensor::run_backward(&[(&out * probe).sum(Kind::Float)], &wrt, false, false));
    all
}

#[test]
fn onednn_linear_equals_libtorch_linear_forward_and_backward() {
    for bias in [true, false] {
        let vs = nn::VarStore::new(Device::Cpu);
        let layer = nn::linear(vs.root() / "l", 64, 48, nn::LinearConfig { bias, ..Default::default() });
        for shape in [vec![1, 64], vec![2, 64], vec![17, 64], vec![200, 64], vec![2, 1, 64], vec![3, 33, 64]] {
            let x = seeded_random::normal(shape.len() as u64 + shape[0] as u64, &shape, Device::Cpu);
            let ours = value_and_grads(|x| linear(x, &layer), &x, &layer);
            let theirs = value_and_grads(|x| x.apply(&layer), &x, &layer);
            assert_eq!(ours.len(), if bias { 4 } else { 3 });
            for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                assert_eq!(a.size(), b.size());
                let diff = max_abs_diff(a, b);
                assert!(diff <= 1e-4, "bias {bias}, input {shape:?}: tensor {i} differs by {diff:e}");
            }
        }
    }
}

#[test]
fn under_autocast_the_layer_is_libtorchs_own() {
    let vs = nn::VarStore::new(Device::Cpu);
    let layer = nn::linear(vs.root() / "l", 16, 8, Default::default());
    let x = seeded_random::normal(3, &[4, 16], Device::Cpu);
    let (ours, theirs) = Precision::Bf16.autocast(Device::Cpu, || (linear(&x, &layer), x.apply(&layer))).unwrap();
    assert_eq!(ours.kind(), Kind::BFloat16);
    assert_eq!(max_abs_diff(&ours.to_kind(Kind::Float), &theirs.to_kind(Kind::Float)), 0.0);
}
