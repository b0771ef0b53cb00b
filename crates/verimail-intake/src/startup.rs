//! Building and running the HTTP application.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::routing::{MethodRouter, get, post};
use sqlx::PgPool;
use tokio::net::TcpListener;
use verimail_domain::ErrorCode;
use verimail_domain::secrets::Keys;
use verimail_infra::amqp::Topology;
use verimail_infra::metrics_server::MetricsListener;
use verimail_infra::publisher::{Publisher, PublisherSettings, Route};

use crate::auth::Authenticator;
use crate::error::ApiError;
use crate::routes::{check, dispatches, health, send};
use crate::state::AppState;
use crate::{IntakeSettings, request_id};

/// Every route: method, path, handler. The router is built from this list
/// and nothing else, and `tests/api/openapi.rs` holds `openapi.json` to it, so
/// a route cannot exist without being documented, or the reverse.
pub fn routes() -> Vec<(&'static str, &'static str, MethodRouter<AppState>)> {
    vec![
        ("POST", "/v2/bases/verificationcode/send", post(send::send)),
        (
            "POST",
            "/v2/bases/verificationcode/check",
            post(check::check),
        ),
        (
            "GET",
            "/v2/bases/verificationcode/dispatches/{id}",
            get(dispatches::show),
        ),
        ("GET", "/healthz", get(health::healthz)),
        ("GET", "/readyz", get(health::readyz)),
        ("GET", "/openapi.json", get(health::openapi)),
    ]
}

pub fn router(state: AppState) -> Router {
    routes()
        .into_iter()
        .fold(Router::new(), |router, (_, path, handler)| {
            router.route(path, handler)
        })
        .fallback(|| async { ApiError::with_message(ErrorCode::NotFound, "No such resource.") })
        .method_not_allowed_fallback(|| async { ApiError::new(ErrorCode::MethodNotAllowed) })
        .layer(axum::middleware::from_fn(request_id::layer))
        .with_state(state)
}

pub struct Application {
    listener: TcpListener,
    metrics: Option<MetricsListener>,
    router: Router,
    limits: crate::serve::HttpLimits,
}

impl Application {
    /// Binds the listener (port 0 picks a free port, for tests).
    pub async fn build(settings: IntakeSettings, pool: PgPool, keys: Keys) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding {}", settings.listen))?;
        verimail_infra::metrics::install();
        // Series the alert rules read with `rate()` exist from the start.
        for reason in ["backlog", "connections"] {
            metrics::counter!(verimail_infra::metrics::SHED, "reason" => reason).increment(0);
        }
        verimail_infra::publisher::start_failure_counters_at_zero(&[Route::Dispatch]);
        let metrics =
            MetricsListener::bind(settings.metrics_listen, "intake", "the metrics listener")
                .await?;
        let publisher = Arc::new(Publisher::new(PublisherSettings {
            url: settings.amqp.url.clone(),
            topology: Topology::new(settings.amqp.prefix.clone()),
            timeout: settings.amqp.publish_timeout,
            // The intake only hands off; the worker declares its retry queues.
            retry_delays: Vec::new(),
        }));
        // Connect eagerly so a misconfigured broker shows at start; a broker
        // that is merely down is retried by the first request.
        if let Err(error) = publisher.ready().await {
            tracing::warn!(
                error = format!("{error:#}"),
                "RabbitMQ not reachable at start; will retry"
            );
        }
        let auth = Arc::new(Authenticator::new(
            pool.clone(),
            keys.clone(),
            settings.auth_cache_ttl,
        ));
        if !settings.auth_cache_ttl.is_zero() {
            crate::auth::revocation::spawn_listener(auth.clone(), pool.clone());
        }
        let limits = settings.http;
        let backlog = Arc::new(crate::backlog::Backlog::new(settings.max_backlog));
        crate::backlog::spawn_sampler(
            &backlog,
            &publisher,
            Topology::new(settings.amqp.prefix.clone()).dispatch_queue(),
        );
        let records = Arc::new(verimail_infra::store::dispatches::Records::new(
            &pool,
            settings.rate_limit,
            settings.handoff_window,
        ));
        let waiters = Arc::new(crate::first_attempts::Waiters::default());
        crate::first_attempts::spawn_listener(waiters.clone(), pool.clone());
        let state = AppState {
            waiters,
            records,
            pool,
            keys,
            auth,
            publisher,
            settings: Arc::new(settings),
            backlog,
        };
        Ok(Self {
            listener,
            metrics,
            router: router(state),
            limits,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(MetricsListener::local_addr)
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), "intake listening");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let metrics = self.metrics.map(|listener| listener.spawn(&stopped));
        let served = crate::serve::serve(self.listener, self.router, self.limits, async move {
            shutdown.await;
            let _ = stop.send(true);
        })
        .await
        .context("serving HTTP");
        if let Some(metrics) = metrics {
            metrics.await.context("metrics task")??;
        }
        served
    }
}
