import KeyholdAgent

await KeyholdAgentMain.run()
