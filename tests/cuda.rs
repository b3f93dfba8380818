//! GPU-only checks, for CUDA builds (INJECTOR_CUDA=1) on a machine with a GPU. Elsewhere each test
//! prints that it skipped: the CPU machines of CI have no GPU, and the GPU runs of bench/NOTES.md
//! carry this binary there.
use tch::{Device, Kind, Tensor};

fn gpu() -> Option<Device> {
    let dev = Device::Cuda(0);
    if tch::Cuda::is_available() && injector::cuda::available(dev) {
        Some(dev)
    } else {
        eprintln!("skipped: not a CUDA build on a GPU");
        None
    }
}

/// The shim's SwiGLU saves less for backward but computes the same kernels: forward and both
/// gradients equal libtorch's silu(g)·u exactly.
#[test]
fn shim_swiglu_equals_silu_times_u() {
    let Some(dev) = gpu() else { return };
    for kind in [Kind::BFloat16, Kind::Float] {
        let leaf = || Tensor::randn([96, 300], (kind, dev)).set_requires_grad(true);
        let (g, u) = (leaf(), leaf());
        let dh = Tensor::randn([96, 300], (kind, dev));
        let ours = injector::cuda::swiglu(&g, &u);
        (&ours * &dh).sum(Kind::Float).backward();
        let (g2, u2) = (g.detach().set_requires_grad(true), u.detach().set_requires_grad(true));
        let reference = g2.silu() * &u2;
        (&reference * &dh).sum(Kind::Float).backward();
        assert!(ours.equal(&reference), "{kind:?} forward");
        assert!(g.grad().equal(&g2.grad()), "{kind:?} d/dg");
        assert!(u.grad().equal(&u2.grad()), "{kind:?} d/du");
    }
}
