//! Prints the sizes of the futures every checkout and every request creates and moves
//! (a future is moved by value when it is made and when it is wrapped, so its size is paid
//! in copies on every call): `cargo run --release -p pool-benches --example sizes`.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::mem::size_of_val;

use http::{Request, Response};
use pool_benches::{bb8_pool, pool, Unit};
use pool_tower::{Db, PoolLayer};
use tower::{service_fn, Layer, Service};

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = rt.enter();
    let bb8 = rt.block_on(bb8_pool());
    let pool = rt.block_on(pool(None));
    println!(
        "{:40} {:5} bytes",
        "bb8 Pool::get_owned",
        size_of_val(&bb8.get_owned())
    );
    println!(
        "{:40} {:5} bytes",
        "pool-core Pool::get",
        size_of_val(&pool.get())
    );
    let mut handler = service_fn(|req: Request<()>| async move {
        let db = req.extensions().get::<Db<Unit>>().unwrap();
        println!(
            "{:40} {:5} bytes",
            "pool-tower Db::conn",
            size_of_val(&db.conn())
        );
        std::hint::black_box(&*db.conn().await.unwrap());
        Ok::<_, Infallible>(Response::new(String::new()))
    });
    let mut layered = PoolLayer::new(pool.clone()).layer(handler);
    let response = layered.call(Request::new(()));
    let handler_future = handler.call(Request::new(()));
    println!(
        "{:40} {:5} bytes",
        "a handler future (the benchmarks')",
        size_of_val(&handler_future)
    );
    drop(handler_future);
    println!(
        "{:40} {:5} bytes",
        "the layer's ResponseFuture around it",
        size_of_val(&response)
    );
    rt.block_on(response).unwrap();
}
