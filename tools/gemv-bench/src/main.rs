fn main() {
    for k in ternary::Kernel::available() {
        println!("{k}");
    }
}
