fn main() -> std::process::ExitCode {
    pitwall::startup()
}
