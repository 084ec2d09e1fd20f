fn main() -> std::process::ExitCode {
    ringcast_loadgen::main_entry()
}
