use super::harness::{
    describe, json_record, protection, run, sandbox_sh, stdout, Caller, Workspace,
};

#[test]
fn run_prints_and_exits_zero() {
    for caller in [Caller::Root, Caller::User, Caller::UserWithoutCgroup] {
        let output = sandbox_sh(caller, "echo hello");
        assert!(output.status.success(), "{caller:?}: {}", describe(&output));
        assert_eq!(stdout(&output), "hello\n", "{caller:?}");
    }
}

#[test]
fn delegated_user_gets_cgroup_limits() {
    let workspace = Workspace::new(Caller::User);
    let output = run(
        Caller::User,
        &["run", "--json", "--memory", "256M", "--", "true"],
        workspace.path(),
    );
    assert!(output.status.success(), "{}", describe(&output));
    let record = json_record(&output);
    let memory = protection(&record, "memory limit");
    assert_eq!(memory["status"], "enforced", "{record}");
}
