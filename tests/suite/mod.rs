mod containment;
mod exit_status;
mod harness;
mod host_files;
mod limits;
mod real_project;
mod rootfs;
mod smoke;
