//! The admin API under `/api`, authenticated by the configured API key
//! (`Authorization: Bearer <key>`), described by `/api/openapi.json`.
//!
//! The OpenAPI document is written first (`openapi.json`, beside this file) and the router
//! follows it; a test checks that both list the same operations.

use crate::router::AppState;
use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use confab_proto::{ParticipantId, RoomId, TrackId};
use confab_sfu::ControlError;
use serde::Deserialize;

pub const OPENAPI: &str = include_str!("openapi.json");

/// (method, path) of every admin operation, as in the OpenAPI document.
pub const OPERATIONS: &[(&str, &str)] = &[
    ("get", "/api/rooms"),
    ("get", "/api/rooms/{room}"),
    ("delete", "/api/rooms/{room}"),
    ("delete", "/api/rooms/{room}/participants/{participant}"),
    ("post", "/api/rooms/{room}/tracks/{track}/mute"),
    ("post", "/api/rooms/{room}/recording"),
    ("delete", "/api/rooms/{room}/recording"),
];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/openapi.json", get(openapi))
        .route("/api/rooms", get(list_rooms))
        .route("/api/rooms/{room}", get(get_room).delete(close_room))
        .route("/api/rooms/{room}/participants/{participant}", delete(kick))
        .route("/api/rooms/{room}/tracks/{track}/mute", post(mute))
        .route(
            "/api/rooms/{room}/recording",
            post(start_recording).delete(stop_recording),
        )
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// An error answer: `{"error": "..."}` with a status.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let status = match e {
            ControlError::NoSuchRoom(_)
            | ControlError::NotFound
            | ControlError::NotRecording(_) => StatusCode::NOT_FOUND,
            ControlError::AlreadyRecording(_) => StatusCode::CONFLICT,
            ControlError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ControlError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

type ApiResult = Result<Response, ApiError>;

/// The API key check: constant-time comparison of `Authorization: Bearer <key>`.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = state
        .config
        .admin_api_key
        .as_deref()
        .filter(|k| !k.is_empty())
    else {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "the admin API is disabled: set admin.api_key".into(),
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let ok = given.len() == key.len()
        && given
            .bytes()
            .zip(key.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if ok {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong API key".into(),
        ))
    }
}

fn room_id(s: &str) -> Result<RoomId, ApiError> {
    RoomId::parse(s).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))
}

async fn list_rooms(State(s): State<AppState>, h: HeaderMap) -> ApiResult {
    authorize(&s, &h)?;
    Ok(Json(s.sfu.rooms().await).into_response())
}

async fn get_room(State(s): State<AppState>, h: HeaderMap, Path(room): Path<String>) -> ApiResult {
    authorize(&s, &h)?;
    let room = room_id(&room)?;
    match s.sfu.rooms().await.into_iter().find(|r| r.room == room) {
        Some(r) => Ok(Json(r).into_response()),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no room {room}"))),
    }
}

async fn close_room(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(room): Path<String>,
) -> ApiResult {
    authorize(&s, &h)?;
    s.sfu.close_room(&room_id(&room)?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn kick(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((room, participant)): Path<(String, String)>,
) -> ApiResult {
    authorize(&s, &h)?;
    s.sfu
        .kick(&room_id(&room)?, &ParticipantId::from_wire(participant))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct MuteBody {
    muted: bool,
}

async fn mute(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((room, track)): Path<(String, String)>,
    body: Option<Json<MuteBody>>,
) -> ApiResult {
    authorize(&s, &h)?;
    let muted = body.is_none_or(|b| b.muted);
    s.sfu
        .mute_track(&room_id(&room)?, &TrackId::from_wire(track), muted)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn start_recording(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(room): Path<String>,
) -> ApiResult {
    authorize(&s, &h)?;
    let room = room_id(&room)?;
    let dir = s.sfu.start_recording(&room).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "room": room, "dir": dir })),
    )
        .into_response())
}

async fn stop_recording(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(room): Path<String>,
) -> ApiResult {
    authorize(&s, &h)?;
    let room = room_id(&room)?;
    let dir = s.sfu.stop_recording(&room).await?;
    Ok(Json(serde_json::json!({
        "room": room,
        "dir": dir,
        "manifest": dir.join("manifest.json"),
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_describes_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if ["get", "post", "delete", "put", "patch"].contains(&method.as_str()) {
                    documented.push((method.clone(), path.clone()));
                }
            }
        }
        documented.retain(|(_, p)| p != "/api/openapi.json");
        documented.sort();
        let mut ours: Vec<(String, String)> = OPERATIONS
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        ours.sort();
        assert_eq!(documented, ours);
    }
}
