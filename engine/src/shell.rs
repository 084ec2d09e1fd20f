pub fn run(_url: &str, _token: Option<&str>) -> i32 {
    eprintln!("shell: not built yet");
    1
}
