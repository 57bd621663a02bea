//! The HTTP surface: every route in one list, the WebSocket upgrade, the signed API.

mod admin;
pub mod api;
pub mod body_guard;
pub mod error;
mod health;
pub mod metrics;
pub mod server;
pub mod ws;

use actix_web::web;

pub use error::ApiError;

/// Every route bellhop serves.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/app/{key}", web::get().to(ws::not_upgraded))
        .route(
            "/apps/{app_id}/events",
            web::post().to(api::events::trigger),
        )
        .route(
            "/apps/{app_id}/batch_events",
            web::post().to(api::events::trigger_batch),
        )
        .route(
            "/apps/{app_id}/channels",
            web::get().to(api::channels::list),
        )
        .route(
            "/apps/{app_id}/channels/{channel}",
            web::get().to(api::channels::show),
        )
        .route(
            "/apps/{app_id}/channels/{channel}/users",
            web::get().to(api::channels::users),
        )
        .route(
            "/apps/{app_id}/users/{user_id}/terminate_connections",
            web::post().to(api::users::terminate_connections),
        )
        .route(
            "/apps/{app_id}/notifications",
            web::post().to(api::notifications::notify),
        )
        .route(
            "/apps/{app_id}/users",
            web::get().to(api::directory::list_users),
        )
        .route(
            "/apps/{app_id}/users/{user_id}",
            web::put().to(api::directory::put_user),
        )
        .route(
            "/apps/{app_id}/users/{user_id}",
            web::get().to(api::directory::get_user),
        )
        .route(
            "/apps/{app_id}/users/{user_id}",
            web::delete().to(api::directory::delete_user),
        )
        .route(
            "/apps/{app_id}/users/{user_id}/devices",
            web::post().to(api::directory::add_device),
        )
        .route(
            "/apps/{app_id}/devices/{token}",
            web::delete().to(api::directory::delete_device),
        )
        .route(
            "/apps/{app_id}/users/{user_id}/web-push",
            web::post().to(api::web_push::add),
        )
        .route(
            "/apps/{app_id}/zoho/sync_logs",
            web::get().to(api::sync_logs::list),
        )
        .route(
            "/apps/{app_id}/users/{user_id}/notifications",
            web::get().to(api::notifications::of_user),
        )
        .route(
            "/apps/{app_id}/users/{user_id}/inbox",
            web::get().to(api::inbox::list),
        )
        .route(
            "/apps/{app_id}/users/{user_id}/inbox/read",
            web::post().to(api::inbox::mark_read),
        )
        .route(
            "/apps/{app_id}/users/{user_id}/inbox/{item}",
            web::delete().to(api::inbox::delete),
        )
        .route(
            "/callbacks/{app_id}/twilio",
            web::post().to(api::provider_callbacks::twilio),
        )
        .route(
            "/callbacks/{app_id}/meta",
            web::get().to(api::provider_callbacks::meta_verify),
        )
        .route(
            "/callbacks/{app_id}/meta",
            web::post().to(api::provider_callbacks::meta),
        )
        .route(
            "/client/{key}/inbox",
            web::get().to(api::client_inbox::list),
        )
        .route(
            "/client/{key}/inbox/read",
            web::post().to(api::client_inbox::read),
        )
        .route(
            "/client/{key}/inbox/{item}",
            web::delete().to(api::client_inbox::delete),
        )
        .route(
            "/client/{key}/web-push",
            web::post().to(api::web_push::client_add),
        )
        .route(
            "/client/{key}/web-push",
            web::delete().to(api::web_push::client_remove),
        )
        .route(
            "/client/{key}/web-push/key",
            web::get().to(api::web_push::client_key),
        )
        .route(
            "/client/{key}/{tail:.*}",
            web::method(actix_web::http::Method::OPTIONS).to(api::client_inbox::preflight),
        )
        .route("/admin/apps", web::get().to(admin::list_apps))
        .route("/admin/apps", web::post().to(admin::create_app))
        .route("/admin/apps/{id}", web::patch().to(admin::update_app))
        .route(
            "/admin/apps/{id}/rotate-secret",
            web::post().to(admin::rotate_secret),
        )
        .route(
            "/admin/apps/{id}/finish-rotation",
            web::post().to(admin::finish_rotation),
        )
        .route(
            "/admin/apps/{id}/users/{user}/notifications",
            web::get().to(admin::user_notifications),
        )
        .route("/admin/jobs", web::get().to(admin::list_jobs))
        .route("/admin/jobs/{id}", web::get().to(admin::show_job))
        .route("/admin/jobs/{id}", web::delete().to(admin::drop_job))
        .route("/admin/jobs/{id}/retry", web::post().to(admin::retry_job))
        .route("/health", web::get().to(health::live))
        .route("/ready", web::get().to(health::ready))
        .default_service(web::to(error::not_found));
}
