//! Motion detection for recorded cameras: [`detector`] is the pure core that works on a luma
//! plane, [`frigate`] a re-implementation of Frigate's detector used as the evaluation
//! baseline, [`eval`] the event-level scoring, [`decode`] and [`worker`] the thin shell that
//! decodes a camera's frames with libavcodec on its own thread and feeds the detector.

pub mod decode;
pub mod detector;
pub mod eval;
pub mod frigate;
pub mod worker;
