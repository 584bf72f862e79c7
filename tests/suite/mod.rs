mod harness;
mod smoke;
