//! `ferrite-launcher`: see `ferrite_launcher::launch` and DESIGN.md "Processes".
fn main() -> std::process::ExitCode {
    ferrite_launcher::launch()
}
