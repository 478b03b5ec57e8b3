//! `ferrite-router`: see `ferrite_router::server`.

fn main() -> anyhow::Result<()> {
    ferrite_router::server::main_from_args()
}
