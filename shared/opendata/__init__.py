"""Open data for other city systems: FIWARE Smart Data Models export (NGSI-LD), the AsyncAPI page."""
