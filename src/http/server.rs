//! The public HTTP server: actix-web's routes for every request, and the WebSocket upgrade
//! taken out of the HTTP layer ([`super::ws::takeover`]) so a Pusher connection keeps only
//! its socket and its own small buffers. Plain TCP or rustls, the same service on top.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use actix_codec::Framed;
use actix_http::{h1, HttpService, Request};
use actix_rt::net::TcpStream;
use actix_service::{fn_factory, fn_service, map_config, IntoServiceFactory};
use actix_web::dev::AppConfig;
use actix_web::{web, App as WebApp};

use crate::state::ServerState;

/// Accepts this many connections queued in the kernel before a burst is refused.
const BACKLOG: i32 = 4096;

pub struct Settings {
    pub addr: String,
    pub tls: Option<rustls::ServerConfig>,
    pub workers: usize,
    /// How long unacknowledged data may wait before the kernel drops the connection.
    pub stall_timeout: Duration,
    /// How long a request's head may take to arrive (slowloris).
    pub header_timeout: Duration,
    /// Request bodies in flight on this node, and how long one may take to arrive.
    pub body_budget: web::Data<super::body_guard::BodyBudget>,
}

/// Small frames must leave at once (Nagle would hold them for the peer's delayed ACK), and a
/// peer that stops reading must not hold its socket for ever.
fn tune(tcp: &TcpStream, stall: Duration) {
    let _ = tcp.set_nodelay(true);
    let _ = socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(stall));
}

fn listeners(addr: &str) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut out = Vec::new();
    for a in addr.to_socket_addrs()? {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(a),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.bind(&a.into())?;
        socket.listen(BACKLOG)?;
        socket.set_nonblocking(true)?;
        out.push(socket.into());
    }
    if out.is_empty() {
        return Err(std::io::Error::other("the address resolves to nothing"));
    }
    Ok(out)
}

/// Builds the server on `settings.addr`; answers it (not yet running) and its addresses.
pub fn build(
    data: web::Data<ServerState>,
    settings: Settings,
) -> std::io::Result<(actix_server::Server, Vec<SocketAddr>)> {
    let mut builder = actix_server::Server::build()
        .workers(settings.workers)
        .backlog(BACKLOG as u32)
        .max_concurrent_connections(200_000)
        .shutdown_timeout(5)
        .disable_signals();
    let mut bound = Vec::new();
    for lst in listeners(&settings.addr)? {
        let local = lst.local_addr()?;
        bound.push(local);
        let data = data.clone();
        let stall = settings.stall_timeout;
        let head = settings.header_timeout;
        let budget = settings.body_budget.clone();
        builder = match settings.tls.clone() {
            None => builder.listen(format!("bellhop-{local}"), lst, move || {
                HttpService::build()
                    .client_request_timeout(head)
                    .local_addr(local)
                    .on_connect_ext(move |io: &TcpStream, _: &mut _| tune(io, stall))
                    .upgrade(upgrader(data.clone().into_inner()))
                    .finish(map_config(
                        app(data.clone(), budget.clone()).into_factory(),
                        |_| AppConfig::default(),
                    ))
                    .tcp()
            })?,
            Some(tls) => builder.listen(format!("bellhop-tls-{local}"), lst, move || {
                type Tls = actix_tls::accept::rustls_0_23::TlsStream<TcpStream>;
                HttpService::build()
                    .client_request_timeout(head)
                    .local_addr(local)
                    .secure()
                    .on_connect_ext(move |io: &Tls, _: &mut _| tune(io.get_ref().0, stall))
                    .upgrade(upgrader(data.clone().into_inner()))
                    .finish(map_config(
                        app(data.clone(), budget.clone()).into_factory(),
                        |_| AppConfig::default(),
                    ))
                    .rustls_0_23(tls.clone())
            })?,
        };
    }
    Ok((builder.run(), bound))
}

/// The upgrade service, for any IO (plain TCP or TLS): each upgrade request goes to
/// [`super::ws::takeover`], boxed so the HTTP dispatcher holds a pointer, not its state.
fn upgrader<T>(
    state: std::sync::Arc<ServerState>,
) -> impl actix_service::ServiceFactory<
    (Request, Framed<T, h1::Codec>),
    Config = (),
    Response = (),
    Error = actix_http::Error,
    InitError = (),
>
where
    T: actix_codec::AsyncRead + actix_codec::AsyncWrite + Unpin + 'static,
{
    fn_factory(move || {
        let state = state.clone();
        async move {
            Ok::<_, ()>(fn_service(
                move |(req, framed): (Request, Framed<T, h1::Codec>)| {
                    Box::pin(upgrade(state.clone(), req, framed))
                },
            ))
        }
    })
}

async fn upgrade<T>(
    state: std::sync::Arc<ServerState>,
    req: Request,
    framed: Framed<T, h1::Codec>,
) -> Result<(), actix_http::Error>
where
    T: actix_codec::AsyncRead + actix_codec::AsyncWrite + Unpin + 'static,
{
    if let Err(e) = super::ws::takeover(state, req, framed).await {
        tracing::debug!(error = %e, "websocket upgrade failed");
    }
    Ok(())
}

fn app(
    data: web::Data<ServerState>,
    budget: web::Data<super::body_guard::BodyBudget>,
) -> WebApp<
    impl actix_service::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    WebApp::new()
        .app_data(data)
        .app_data(budget)
        .wrap(actix_web::middleware::from_fn(super::body_guard::guard))
        .wrap(actix_web::middleware::from_fn(super::metrics::observe_api))
        .configure(super::routes)
}
