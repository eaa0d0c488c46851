import KeyholdAgentCommands

await KeyholdAgentMain.run()
