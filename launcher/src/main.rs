fn main() {
    println!("ferrite-launcher: not wired yet");
}
