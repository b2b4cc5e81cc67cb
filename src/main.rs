fn main() {
    println!("kimup {}", env!("CARGO_PKG_VERSION"));
}
