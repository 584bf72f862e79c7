mod apply;
mod common;
mod diff;
mod discard;
mod journal;
mod overlay;
mod patch;
mod sensitive;
