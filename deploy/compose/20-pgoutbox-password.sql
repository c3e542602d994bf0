-- Compose only: give the role sql/setup.sql created the demo password that
-- compose/pgoutbox-db-password.txt holds. Use a real secret anywhere else.
ALTER ROLE pgoutbox PASSWORD 'pgoutbox-compose-demo';
