//! microagent's guest init (PID 1). Built static so it runs in any image.

fn main() {
    eprintln!("microagent-init: not yet implemented");
    std::process::exit(1);
}
