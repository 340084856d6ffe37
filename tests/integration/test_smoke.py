def test_a_purchase_earns_points_and_shows_in_the_balance(api):
    program = api.create_program()
    api.enroll(program, "C1")
    r = api.purchase(program, "O1", "C1", [{"sku": "A", "unit_price_minor": 1050}])
    assert r.status_code == 201, r.text
    assert r.json()["points_earned"] == 10
    assert api.balance(program, "ext:C1")["available"] == 10
