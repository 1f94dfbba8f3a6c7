//! The `ductwork` command line tool: benchmark every transport against raw OS baselines
//! (`ductwork bench`), and send or receive JSON messages over any endpoint (`ductwork send`,
//! `ductwork listen`). Run `ductwork --help` for details.

mod cli;

fn main() {
    std::process::exit(cli::main());
}
