fn main() {
    println!("ferrite-router: not wired yet");
}
