//! Starts the envtest control plane outside a test, for a person to look
//! around (`kubectl --kubeconfig <printed path>`) or for scripts.
//!
//!   bulkhead-envtest [--install]
//!
//! `--install` also applies `manifests/` and runs the operator. Prints
//! `kubeconfig: <path>` and `pids: <pid> ...` (the process groups it
//! started), then runs until its standard input closes (Ctrl-D) or it is
//! killed; either way every process it started ends with it.

use std::io::Read;

use anyhow::{Result, bail};
use bulkhead_envtest::ControlPlane;
use bulkhead_envtest::control_plane::Options;

fn main() -> Result<()> {
    let mut install = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--install" => install = true,
            other => bail!("unknown argument {other:?}; usage: bulkhead-envtest [--install]"),
        }
    }
    let control_plane = ControlPlane::start(&Options::default())?;
    let mut pids = control_plane.pids();
    if install {
        pids.push(control_plane.install_bulkhead().operator().process().pid());
    }
    println!("kubeconfig: {}", control_plane.admin_kubeconfig().display());
    println!(
        "pids: {}",
        pids.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("ready");
    let mut sink = Vec::new();
    std::io::stdin().read_to_end(&mut sink)?;
    Ok(())
}
