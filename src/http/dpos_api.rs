//! DPoS routes (docs/API.md, "DPoS approval").
//!
//! On a **representative**: `POST /internal/v1/dpos/proposals`, signed by its continent
//! node (the one peer on its allow-list). The proposal's header must be signed by that
//! node for this representative's continent (403 otherwise); the representative then
//! votes, once per slot: the vote is recorded (fsynced) before the 200, and a proposal of
//! another batch for a slot already voted is answered 409 with the earlier vote.
//!
//! On a **continent**: `POST /v1/dpos/votes` takes a signed vote from anyone (votes are
//! self-authenticating; 400 malformed or inconsistent, 403 unknown representative, 401
//! bad signature, each changing nothing), `GET /v1/dpos/representatives` and
//! `GET /v1/dpos/evidence`.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;

use super::common::read_body;
use super::peer_auth::AuthenticatedPeer;
use super::{ApiError, ApiResult};
use crate::crypto::SigningKey;
use crate::engines::dpos::VoteError;
use crate::federation::dpos::{DposBook, VoteRefusal};
use crate::messages::dpos::{
    DposProposal, MAX_DPOS_BODY_BYTES, PROPOSALS_PATH, SignedVote, VOTES_PATH, Vote, VoteReply,
};
use crate::messages::{decode, hex32};
use crate::storage::continent_dpos::{Evidence, Recorded};
use crate::storage::dpos_store::{DposStore, Voted};

/// What a representative's route needs, registered as `web::Data<RepresentativeState>`.
pub struct RepresentativeState {
    pub node_id: String,
    pub continent: String,
    pub key: Arc<SigningKey>,
    /// The continent nodes on its allow-list: id → public key.
    pub continents: Vec<(String, Vec<u8>)>,
    pub store: Arc<DposStore>,
}

pub fn configure_representative(cfg: &mut web::ServiceConfig) {
    cfg.route(PROPOSALS_PATH, web::post().to(propose));
}

pub fn configure_continent(cfg: &mut web::ServiceConfig) {
    cfg.route(VOTES_PATH, web::post().to(take_vote))
        .route("/v1/dpos/representatives", web::get().to(representatives))
        .route("/v1/dpos/evidence", web::get().to(evidence));
}

fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(500, "internal", format!("{what}: {e}"))
}

/// The 409 body: the error and the vote the representative signed earlier.
#[derive(Serialize)]
struct AlreadyVoted<'a> {
    error: super::error::ErrorBody<'a>,
    vote: SignedVote,
    earlier: bool,
}

/// `POST /internal/v1/dpos/proposals` (representative).
async fn propose(
    peer: AuthenticatedPeer,
    state: web::Data<RepresentativeState>,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let body = read_body(&req, payload, MAX_DPOS_BODY_BYTES).await?;
    peer.check_body(&body)?;
    let proposal: DposProposal = decode(&body)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("not a DPoS proposal: {e}")))?;
    let Some((_, key)) = state.continents.iter().find(|(id, _)| *id == peer.id) else {
        return Err(ApiError::new(
            403,
            "not_a_continent",
            format!(
                "{} is not a continent node this representative serves",
                peer.id
            ),
        ));
    };
    if proposal.signer != peer.id || proposal.header.continent != state.continent {
        return Err(ApiError::new(
            403,
            "not_this_continent",
            format!(
                "a proposal of continent {:?} signed by {:?}; this representative votes for {:?} on proposals its continent node signs",
                proposal.header.continent, proposal.signer, state.continent
            ),
        ));
    }
    let (key, st) = (key.clone(), state.clone());
    let voted = web::block(move || {
        proposal.verify(&key).map_err(|_| {
            ApiError::new(
                403,
                "bad_batch_signature",
                "the continent batch's signature does not verify with the continent's key",
            )
        })?;
        let id = proposal.header.id();
        let slot = proposal.header.seq;
        st.store
            .vote_once(&st.continent, slot, || {
                SignedVote::sign(
                    &st.key,
                    Vote {
                        continent: st.continent.clone(),
                        slot,
                        batch_id: id,
                        representative: st.node_id.clone(),
                    },
                )
                .map_err(|e| e.to_string())
            })
            .map(|v| (v, id))
            .map_err(|e| ApiError::storage_unavailable(format!("the vote was not recorded: {e}")))
    })
    .await
    .map_err(|e| internal("voting", e))??;
    Ok(match voted {
        (Voted::New(vote), _) => HttpResponse::Ok().json(VoteReply {
            vote,
            earlier: false,
        }),
        (Voted::Earlier(vote), id) if vote.batch_id == id => HttpResponse::Ok().json(VoteReply {
            vote,
            earlier: true,
        }),
        (Voted::Earlier(vote), _) => {
            let message = format!(
                "this representative voted for {} in slot {} already",
                hex32(&vote.batch_id),
                vote.slot
            );
            HttpResponse::Conflict().json(AlreadyVoted {
                error: super::error::ErrorBody {
                    code: "already_voted",
                    message: &message,
                },
                vote,
                earlier: true,
            })
        }
    })
}

/// The answer to `POST /v1/dpos/votes`.
#[derive(Debug, Serialize)]
pub struct VoteTaken {
    /// `recorded` (a first vote for its slot), `duplicate` (seen before) or
    /// `equivocation` (it conflicts with an earlier vote of the same slot).
    pub outcome: &'static str,
    /// This vote brought its batch to two thirds.
    pub approved_now: bool,
    /// Evidence was recorded and stake slashed by this vote.
    pub slashed: Option<u64>,
}

fn refusal(r: VoteRefusal) -> ApiError {
    let message = r.to_string();
    match r {
        VoteRefusal::Invalid(VoteError::UnknownRepresentative(_)) => {
            ApiError::new(403, "unknown_representative", message)
        }
        VoteRefusal::Invalid(VoteError::BadSignature(_)) => {
            ApiError::new(401, "bad_signature", message)
        }
        VoteRefusal::Invalid(VoteError::WrongContinent { .. }) | VoteRefusal::WrongSlot { .. } => {
            ApiError::bad_request("invalid_vote", message)
        }
        VoteRefusal::FutureSlot { .. } => ApiError::bad_request("unknown_slot", message),
        VoteRefusal::Store(_) => ApiError::storage_unavailable(message),
    }
}

/// `POST /v1/dpos/votes` (continent; anyone).
async fn take_vote(
    book: web::Data<Arc<DposBook>>,
    req: HttpRequest,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    super::common::require_json(&req)?;
    let body = read_body(&req, payload, MAX_DPOS_BODY_BYTES).await?;
    let vote: SignedVote = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_vote", format!("not a signed vote: {e}")))?;
    if !book.enabled() {
        return Err(ApiError::new(
            404,
            "dpos_off",
            "this continent runs no DPoS approval ([dpos] engine = \"off\")",
        ));
    }
    let book = book.get_ref().clone();
    let outcome = web::block(move || book.accept(&vote))
        .await
        .map_err(|e| internal("recording the vote", e))?
        .map_err(refusal)?;
    let (label, slashed) = match &outcome.recorded {
        Recorded::New => ("recorded", None),
        Recorded::Duplicate => ("duplicate", None),
        Recorded::Conflict { offence, .. } => ("equivocation", offence.as_ref().map(|e| e.slashed)),
    };
    Ok(HttpResponse::Ok().json(VoteTaken {
        outcome: label,
        approved_now: outcome.approved_now,
        slashed,
    }))
}

/// One entry of `GET /v1/dpos/representatives`.
#[derive(Debug, Serialize)]
pub struct RepresentativeView {
    pub id: String,
    /// Stake in force: configured minus slashed.
    pub stake: u64,
    pub configured_stake: u64,
    /// It was slashed (proven to equivocate).
    pub slashed: bool,
    pub slashed_stake: u64,
    /// Valid votes the continent recorded from it.
    pub votes_cast: u64,
}

#[derive(Debug, Serialize)]
pub struct RepresentativesReply {
    pub engine: crate::config::ApprovalEngineName,
    pub total_stake: u64,
    pub representatives: Vec<RepresentativeView>,
}

async fn representatives(
    book: web::Data<Arc<DposBook>>,
    config: web::Data<crate::config::DposConfig>,
) -> ApiResult<HttpResponse> {
    let b = book.get_ref().clone();
    let standings = web::block(move || b.standings())
        .await
        .map_err(|e| internal("reading the stake ledger", e))?
        .map_err(|e| internal("reading the stake ledger", e))?;
    Ok(HttpResponse::Ok().json(RepresentativesReply {
        engine: config.engine(),
        total_stake: standings.iter().map(|s| s.stake).sum(),
        representatives: standings
            .into_iter()
            .map(|s| RepresentativeView {
                id: s.id,
                stake: s.stake,
                configured_stake: s.configured_stake,
                slashed: s.slashed > 0,
                slashed_stake: s.slashed,
                votes_cast: s.votes_cast,
            })
            .collect(),
    }))
}

#[derive(Debug, Serialize)]
pub struct EvidenceReply {
    pub evidence: Vec<Evidence>,
}

async fn evidence(book: web::Data<Arc<DposBook>>) -> ApiResult<HttpResponse> {
    let b = book.get_ref().clone();
    let evidence = web::block(move || b.store.dpos_evidence())
        .await
        .map_err(|e| internal("reading the evidence", e))?
        .map_err(|e| internal("reading the evidence", e))?;
    Ok(HttpResponse::Ok().json(EvidenceReply { evidence }))
}
