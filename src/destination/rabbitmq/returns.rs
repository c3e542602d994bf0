//! Which publish a returned message is. No I/O.
//!
//! AMQP does not number a `basic.return`. The broker sends it before the `basic.ack` that
//! covers the returned message, but it may send another ack first (a `multiple` one for
//! earlier publishes stored meanwhile), and a `multiple` ack covers several publishes. lapin
//! hands each return to the next confirm it completes after the return came, in no
//! particular order within an ack, so the confirm carrying a return may be any publish
//! settled with or before the returned one. The publisher therefore keeps the returns it
//! receives in a pool and, each time it takes the confirms that have settled (all of those
//! settled so far, so also the confirm lapin completed first), puts each return on the
//! publish it is, by event id and routing key.

/// A returned message: which publish it was, and why the broker returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Return {
    /// The message's `message_id` (pgoutbox sets the event id).
    pub message_id: Option<String>,
    pub routing_key: String,
    pub code: u16,
    pub text: String,
}

impl From<lapin::message::BasicReturnMessage> for Return {
    fn from(m: lapin::message::BasicReturnMessage) -> Self {
        Return {
            message_id: m
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_owned()),
            routing_key: m.delivery.routing_key.as_str().to_owned(),
            code: m.reply_code,
            text: m.reply_text.as_str().to_owned(),
        }
    }
}

impl Return {
    /// Whether this is the publish of event `id` with routing key `key`.
    pub fn is(&self, id: &[u8], key: &str) -> bool {
        self.message_id.as_deref().map(str::as_bytes) == Some(id) && self.routing_key == key
    }
}

/// Takes out of `pool` the returns of the settled publishes `keys` (each one's event id and
/// routing key; `None`: no longer awaited), oldest return first, and gives each publish its
/// own, if any. Returns matching none of them stay in the pool (their publish settles
/// later). Two publishes with the same id and routing key take one return each, in order.
pub fn take_returns(keys: &[Option<(&[u8], &str)>], pool: &mut Vec<Return>) -> Vec<Option<Return>> {
    let mut own: Vec<Option<Return>> = vec![None; keys.len()];
    let mut i = 0;
    while i < pool.len() {
        let r = &pool[i];
        let its = (0..keys.len())
            .find(|&k| own[k].is_none() && keys[k].is_some_and(|(id, key)| r.is(id, key)));
        match its {
            Some(k) => own[k] = Some(pool.remove(i)),
            None => i += 1,
        }
    }
    own
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ret(id: &str, key: &str) -> Return {
        Return {
            message_id: Some(id.into()),
            routing_key: key.into(),
            code: 312,
            text: "NO_ROUTE".into(),
        }
    }

    #[test]
    fn a_return_handed_to_another_publish_of_the_ack_goes_to_the_one_it_is() {
        // lapin gave e2's return to e1's confirm (both covered by one multiple ack).
        let keys = [Some((&b"e1"[..], "order")), Some((&b"e2"[..], "customer"))];
        let mut pool = vec![ret("e2", "customer")];
        let own = take_returns(&keys, &mut pool);
        assert_eq!(own, vec![None, Some(ret("e2", "customer"))]);
        assert!(pool.is_empty());
    }

    #[test]
    fn a_return_that_came_with_an_earlier_ack_waits_for_its_publish() {
        // ack(e1, multiple) came after e2's return and before e2's own ack: lapin gave the
        // return to e1's confirm; e2 settles later, and takes it then.
        let mut pool = vec![ret("e2", "customer")];
        let own = take_returns(&[Some((&b"e1"[..], "order"))], &mut pool);
        assert_eq!(own, vec![None]);
        assert_eq!(pool, vec![ret("e2", "customer")], "kept for e2");
        let own = take_returns(&[Some((&b"e2"[..], "customer"))], &mut pool);
        assert_eq!(own, vec![Some(ret("e2", "customer"))]);
        assert!(pool.is_empty());
    }

    #[test]
    fn the_routing_key_must_match_too() {
        // The same event id published twice, once to a bound key and once to an unbound one
        // (a dead letter of it, say): the return is the unbound one's.
        let keys = [Some((&b"e1"[..], "bound")), Some((&b"e1"[..], "unbound"))];
        let own = take_returns(&keys, &mut vec![ret("e1", "unbound")]);
        assert_eq!(own, vec![None, Some(ret("e1", "unbound"))]);
    }

    #[test]
    fn identical_publishes_take_one_return_each_in_order() {
        let keys = [
            Some((&b"e1"[..], "k")),
            Some((&b"e1"[..], "k")),
            Some((&b"e1"[..], "k")),
        ];
        let mut pool = vec![ret("e1", "k"), ret("e1", "k")];
        let own = take_returns(&keys, &mut pool);
        assert_eq!(own, vec![Some(ret("e1", "k")), Some(ret("e1", "k")), None]);
        assert!(pool.is_empty());
    }

    #[test]
    fn a_publish_no_longer_awaited_takes_no_return() {
        let keys = [None, Some((&b"e1"[..], "k"))];
        let mut pool = vec![ret("e2", "k")];
        let own = take_returns(&keys, &mut pool);
        assert_eq!(own, vec![None, None]);
        assert_eq!(pool, vec![ret("e2", "k")]);
    }
}
