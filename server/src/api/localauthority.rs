//! Admin API `LocalAuthority`: manual X.509 CA and JWT key rotation (SPIRE's
//! `localauthority x509|jwt ...`).

use sigil_proto::sigil::v1 as pb;
use tonic::{Request, Response, Status};

use crate::api::admin::Admin;
use crate::jwt;
use crate::x509_rotation;

#[tonic::async_trait]
impl pb::local_authority_server::LocalAuthority for Admin {
    async fn get_jwt_authority_state(
        &self,
        _req: Request<pb::GetJwtAuthorityStateRequest>,
    ) -> Result<Response<pb::JwtAuthorityState>, Status> {
        let st = &self.0;
        let info = st.ca.jwt().info();
        Ok(Response::new(jwt::keys_info_to_pb(
            &info,
            st.ca.bundle().sequence,
        )))
    }

    async fn prepare_jwt_authority(
        &self,
        _req: Request<pb::PrepareJwtAuthorityRequest>,
    ) -> Result<Response<pb::JwtAuthorityState>, Status> {
        let st = &self.0;
        let info = jwt::prepare(st).await?;
        Ok(Response::new(jwt::keys_info_to_pb(
            &info,
            st.ca.bundle().sequence,
        )))
    }

    async fn activate_jwt_authority(
        &self,
        req: Request<pb::ActivateJwtAuthorityRequest>,
    ) -> Result<Response<pb::JwtAuthorityState>, Status> {
        let st = &self.0;
        let key_id = Some(req.into_inner().key_id).filter(|k| !k.is_empty());
        let info = jwt::activate(st, key_id).await?;
        Ok(Response::new(jwt::keys_info_to_pb(
            &info,
            st.ca.bundle().sequence,
        )))
    }

    async fn get_x509_authority_state(
        &self,
        _req: Request<pb::GetX509AuthorityStateRequest>,
    ) -> Result<Response<pb::X509AuthorityState>, Status> {
        Ok(Response::new(x509_rotation::state(&self.0)))
    }

    async fn prepare_x509_authority(
        &self,
        _req: Request<pb::PrepareX509AuthorityRequest>,
    ) -> Result<Response<pb::X509AuthorityState>, Status> {
        Ok(Response::new(x509_rotation::prepare(&self.0).await?))
    }

    async fn activate_x509_authority(
        &self,
        req: Request<pb::ActivateX509AuthorityRequest>,
    ) -> Result<Response<pb::X509AuthorityState>, Status> {
        let id = req.into_inner().authority_id;
        Ok(Response::new(x509_rotation::activate(&self.0, id).await?))
    }
}
