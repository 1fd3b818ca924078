//! pgtier-app: the bundled HTTP application server (built in a later issue).

fn main() {
    eprintln!("pgtier-app is not built yet: see the README status table");
    std::process::exit(2);
}
