//! The admin API under `/api`, authenticated by the configured API key
//! (`Authorization: Bearer <key>`) or, for one room's operations, an access token of that
//! room with `room_admin`; described by `/api/openapi.json`.
//!
//! Removing a participant bans its identity from the room for `room.kick_ban_ms` (unless
//! `?ban=false`); revoking a token id (`/api/tokens/revoked`) refuses the token at join
//! and removes whoever is in with it.
//!
//! The OpenAPI document is written first (`openapi.json`, beside this file) and the router
//! follows it; a test checks that both list the same operations.

use crate::router::AppState;
use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use confab_proto::{ParticipantId, RoomId, TrackId};
use confab_sfu::ControlError;
use serde::Deserialize;

pub const OPENAPI: &str = include_str!("openapi.json");

/// (method, path) of every admin operation, as in the OpenAPI document.
pub const OPERATIONS: &[(&str, &str)] = &[
    ("get", "/api/cluster"),
    ("get", "/api/rooms"),
    ("get", "/api/rooms/{room}"),
    ("delete", "/api/rooms/{room}"),
    ("delete", "/api/rooms/{room}/participants/{participant}"),
    ("post", "/api/rooms/{room}/tracks/{track}/mute"),
    ("post", "/api/rooms/{room}/recording"),
    ("delete", "/api/rooms/{room}/recording"),
    ("get", "/api/tokens/revoked"),
    ("post", "/api/tokens/revoked"),
];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/openapi.json", get(openapi))
        .route("/api/cluster", get(cluster))
        .route("/api/rooms", get(list_rooms))
        .route("/api/rooms/{room}", get(get_room).delete(close_room))
        .route("/api/rooms/{room}/participants/{participant}", delete(kick))
        .route("/api/rooms/{room}/tracks/{track}/mute", post(mute))
        .route(
            "/api/rooms/{room}/recording",
            post(start_recording).delete(stop_recording),
        )
        .route("/api/tokens/revoked", get(list_revoked).post(revoke))
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
            ControlError::ShuttingDown | ControlError::Full(_) => StatusCode::SERVICE_UNAVAILABLE,
            ControlError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

type ApiResult = Result<Response, ApiError>;

/// Who may call: the API key (`Authorization: Bearer <key>`, compared in constant time)
/// for everything, or, for the operations on one room, an access token of that room with
/// the `room_admin` grant.
fn authorize(state: &AppState, headers: &HeaderMap, room: Option<&RoomId>) -> Result<(), ApiError> {
    use subtle::ConstantTimeEq;
    let key = state
        .config
        .admin_api_key
        .as_deref()
        .filter(|k| !k.is_empty());
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if let Some(key) = key
        && bool::from(given.as_bytes().ct_eq(key.as_bytes()))
    {
        return Ok(());
    }
    if let Some(room) = room
        && !given.is_empty()
        && let Ok(claims) = state.verifier.verify(given)
        && claims.grants.room_admin
        && claims.allows_room(room.as_str())
    {
        return Ok(());
    }
    if key.is_none() && room.is_none() {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "the admin API is disabled: set admin.api_key".into(),
        ));
    }
    Err(ApiError(
        StatusCode::UNAUTHORIZED,
        "missing or wrong API key (or a token without room_admin for this room)".into(),
    ))
}

fn room_id(s: &str) -> Result<RoomId, ApiError> {
    RoomId::parse(s).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))
}

async fn list_rooms(State(s): State<AppState>, h: HeaderMap) -> ApiResult {
    authorize(&s, &h, None)?;
    let mut rooms = s.sfu.rooms().await;
    for r in &mut rooms {
        locate(&s, &mut r.elsewhere);
    }
    Ok(Json(rooms).into_response())
}

/// Names the node and worker of each participant on another node.
fn locate(s: &AppState, elsewhere: &mut [confab_sfu::Elsewhere]) {
    if let Some(cascade) = s.cluster.as_ref().and_then(|c| c.cascade()) {
        for e in elsewhere {
            if let Some((node, worker)) = cascade.locate(e.copy) {
                e.node = Some(node);
                e.worker = Some(worker);
            }
        }
    }
}

async fn cluster(State(s): State<AppState>, h: HeaderMap) -> ApiResult {
    authorize(&s, &h, None)?;
    let Some(cluster) = &s.cluster else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "a single node: no cluster.redis_url".into(),
        ));
    };
    match cluster.view().await {
        Ok(view) => Ok(Json(view).into_response()),
        Err(e) => Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

async fn get_room(State(s): State<AppState>, h: HeaderMap, Path(room): Path<String>) -> ApiResult {
    let room = room_id(&room)?;
    authorize(&s, &h, Some(&room))?;
    // A room spread over workers has a copy on each: one room, everyone in it (the
    // first copy's worker; `GET /api/rooms` lists the copies).
    let mut copies = s.sfu.rooms().await.into_iter().filter(|r| r.room == room);
    match copies.next() {
        Some(mut r) => {
            for c in copies {
                r.participants.extend(c.participants);
                r.relays.extend(c.relays);
                r.elsewhere.extend(c.elsewhere);
                r.recording |= c.recording;
            }
            // Each copy here knows the participants on other nodes: once each, named by
            // node.
            let mut seen = std::collections::HashSet::new();
            r.elsewhere
                .retain(|e| seen.insert(e.participant.id.clone()));
            locate(&s, &mut r.elsewhere);
            Ok(Json(r).into_response())
        }
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no room {room}"))),
    }
}

async fn close_room(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(room): Path<String>,
) -> ApiResult {
    let room = room_id(&room)?;
    authorize(&s, &h, Some(&room))?;
    s.sfu.close_room(&room).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct KickQuery {
    /// `false` (or `0`): remove only, no ban.
    ban: Option<String>,
}

async fn kick(
    State(s): State<AppState>,
    h: HeaderMap,
    Path((room, participant)): Path<(String, String)>,
    Query(q): Query<KickQuery>,
) -> ApiResult {
    let room = room_id(&room)?;
    authorize(&s, &h, Some(&room))?;
    let ban = match q.ban.as_deref() {
        None | Some("true" | "1") => true,
        Some("false" | "0") => false,
        Some(other) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("ban must be true or false, not {other:?}"),
            ));
        }
    };
    s.sfu
        .kick(&room, &ParticipantId::from_wire(participant), ban)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    /// The token's id (`jti` claim).
    jti: String,
    /// The token's expiry (`exp`, Unix seconds): how long the revocation is kept.
    exp: u64,
}

/// Longest token id taken: ids are for looking up, not for storing documents.
const MAX_JTI_BYTES: usize = 256;

async fn revoke(
    State(s): State<AppState>,
    h: HeaderMap,
    body: Result<Json<RevokeBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    authorize(&s, &h, None)?;
    let RevokeBody { jti, exp } = body
        .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, e.body_text()))?
        .0;
    if jti.is_empty() || jti.len() > MAX_JTI_BYTES {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("jti must be 1 to {MAX_JTI_BYTES} bytes"),
        ));
    }
    s.verifier
        .revoke(&jti, exp)
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    // Whoever is in with it now goes too.
    let removed = s.sfu.remove_token(&jti).await;
    tracing::info!(jti = %jti, exp, removed, "access token revoked");
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "jti": jti, "exp": exp, "removed": removed })),
    )
        .into_response())
}

async fn list_revoked(State(s): State<AppState>, h: HeaderMap) -> ApiResult {
    authorize(&s, &h, None)?;
    let all: Vec<serde_json::Value> = s
        .verifier
        .revoked()
        .into_iter()
        .map(|(jti, exp)| serde_json::json!({ "jti": jti, "exp": exp }))
        .collect();
    Ok(Json(all).into_response())
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
    let room = room_id(&room)?;
    authorize(&s, &h, Some(&room))?;
    let muted = body.is_none_or(|b| b.muted);
    s.sfu
        .mute_track(&room, &TrackId::from_wire(track), muted)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn start_recording(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(room): Path<String>,
) -> ApiResult {
    let room = room_id(&room)?;
    authorize(&s, &h, Some(&room))?;
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
    let room = room_id(&room)?;
    authorize(&s, &h, Some(&room))?;
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
