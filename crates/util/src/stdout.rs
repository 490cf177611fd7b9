//! Writing a command-line tool's output without panicking: `println!`
//! panics when the reader has gone (a closed pipe, as with `| head`) or the
//! disk is full. [`outln!`](crate::outln) ends the program quietly with 141
//! (as SIGPIPE would) on a closed pipe, and with a message on stderr and
//! status 1 on any other write error.

/// The body of [`outln!`](crate::outln): writes `args` and a newline to
/// stdout, exiting as described in the module docs if that fails.
pub fn write_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("error: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// `println!` that cannot panic (see [`stdout`](crate::stdout)).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::stdout::write_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::stdout::write_line(format_args!($($arg)*))
    };
}
