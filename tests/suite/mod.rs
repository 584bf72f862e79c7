mod harness;
mod smoke;
mod real_project;
