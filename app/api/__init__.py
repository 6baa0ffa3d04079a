from flask import Flask


def register_blueprints(app: Flask) -> None:
    from app.api import admin, admin_summary, dead_letters, health, metrics, openapi, orders

    app.register_blueprint(orders.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(dead_letters.bp)
    app.register_blueprint(admin_summary.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(openapi.bp)


__all__ = ["register_blueprints"]
